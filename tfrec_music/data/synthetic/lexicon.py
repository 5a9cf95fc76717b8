"""Fixed vocabularies of the synthetic catalogue: the genre tree, moods, words, columns.

Also the ids of the independent random streams each part of the generator draws from.
"""

from typing import Optional, Tuple

# (name, parent name or None). Level 1 nodes first, then level 2, then 3.
GENRE_TREE: Tuple[Tuple[str, Optional[str]], ...] = (
    ("rock", None), ("pop", None), ("hip hop", None), ("electronic", None),
    ("jazz", None), ("folk", None),
    ("indie rock", "rock"), ("metal", "rock"), ("classic rock", "rock"),
    ("synth pop", "pop"), ("dance pop", "pop"), ("k-pop", "pop"),
    ("trap", "hip hop"), ("boom bap", "hip hop"), ("r&b", "hip hop"),
    ("house", "electronic"), ("techno", "electronic"), ("ambient", "electronic"),
    ("bebop", "jazz"), ("smooth jazz", "jazz"), ("blues", "jazz"),
    ("indie folk", "folk"), ("country", "folk"), ("singer-songwriter", "folk"),
    ("shoegaze", "indie rock"), ("post-punk", "indie rock"),
    ("doom metal", "metal"), ("deep house", "house"),
    ("lo-fi hip hop", "boom bap"), ("bluegrass", "country"),
)

MOODS = ("chill", "energetic", "melancholic", "happy", "dark", "romantic")

# Words of each parent genre's lyrics and titles.
PARENT_WORDS = {
    "rock": "guitar riff highway thunder rebel stone fire wild electric amplifier "
            "road scream chains steel roll",
    "pop": "dance baby party sugar shine star crush glitter radio bubble kiss summer "
           "tonight dream sparkle",
    "hip hop": "street flow hustle block money crew beat rhyme mic grind city gold "
               "corner bounce real",
    "electronic": "synth pulse bass circuit neon laser signal loop wave frequency "
                  "digital machine strobe drop echo",
    "jazz": "swing saxophone smoke velvet blue trumpet lounge martini cool brushes "
            "groove moon cafe piano improvise",
    "folk": "river mountain cabin harvest whiskey banjo porch valley wagon meadow "
            "fiddle hometown dust creek lantern",
}
# A few signature words of each level-2 and level-3 genre.
NODE_WORDS = {
    "indie rock": "fuzz garage basement", "metal": "doom abyss iron",
    "classic rock": "vinyl stadium legend", "synth pop": "retro chrome arcade",
    "dance pop": "club floor remix", "k-pop": "idol seoul stage",
    "trap": "808 drip flex", "boom bap": "cipher crate sample", "r&b": "silk slow touch",
    "house": "jack warehouse diva", "techno": "berlin industrial minimal",
    "ambient": "drift haze horizon", "bebop": "changes bird solo",
    "smooth jazz": "sunset breeze satin", "blues": "crossroads delta mojo",
    "indie folk": "woods cardigan attic", "country": "truck boots rodeo",
    "singer-songwriter": "diary letter coffee", "shoegaze": "reverb blur",
    "post-punk": "concrete angular", "doom metal": "funeral monolith",
    "deep house": "sunrise terrace", "lo-fi hip hop": "study tape",
    "bluegrass": "holler mandolin",
}
MOOD_WORDS = {
    "chill": "calm slow easy lazy float gentle soft still cozy mellow",
    "energetic": "run jump power rush fast loud alive burn go higher",
    "melancholic": "tears rain lonely gone grey goodbye empty cold fading ghost",
    "happy": "sunshine smile bright golden free laugh good sweet hello yes",
    "dark": "shadow night blood black fear grave storm witch void midnight",
    "romantic": "love heart darling forever kiss hold desire tender rose yours",
}
FILLER_WORDS = ("the and i you me my we a to in of it on your all oh yeah just like "
                "know feel when never now this that one time way so got can be with "
                "for up down out here there").split()
NOISE_TAGS = ("favorites", "seen live", "love", "awesome", "00s", "90s", "10s",
              "female vocalists", "male vocalists", "instrumental", "cover", "remix",
              "live", "classic", "underrated", "beautiful", "catchy", "summer")
COUNTRIES = ("US", "UK", "DE", "BR", "JP", "FR", "SE", "MX", "CA", "AU", "KR", "ES")
COUNTRY_WEIGHTS = (0.24, 0.10, 0.08, 0.09, 0.07, 0.06, 0.04, 0.07, 0.05, 0.04, 0.06, 0.10)
USERNAME_A = ("blue", "lazy", "wild", "quiet", "neon", "lucky", "cosmic", "velvet",
              "rusty", "silver", "sleepy", "happy", "dark", "golden", "tiny", "brave")
USERNAME_B = ("fox", "owl", "wolf", "cat", "otter", "raven", "tiger", "panda", "moth",
              "heron", "lynx", "crow", "bear", "hare", "seal", "finch")
AUDIO_COLUMNS = ("danceability", "energy", "loudness", "speechiness", "acousticness",
                 "valence", "tempo")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "weight")
PLAYLIST_COLUMNS = ("playlist_id", "user_id", "item_id", "pos", "name", "timestamp",
                    "theme_genre", "theme_mood")

# Independent random streams: changing one part of the generator (say the
# playlists) leaves every other table as it was.
STREAM_CATALOGUE = 1
STREAM_USERS = 2
STREAM_LINKS = 3
STREAM_INTERACTIONS = 4
STREAM_PLAYLISTS = 5
