"""Word lists for needle keys ("adjective-noun", as RULER names its needles)."""

ADJECTIVES = (
    "amber", "ancient", "bitter", "bold", "brave", "breezy", "bright", "brisk", "calm", "careful",
    "cheerful", "clever", "cloudy", "crimson", "crisp", "curious", "damp", "dusty", "eager", "early",
    "elegant", "empty", "faint", "fancy", "fierce", "fluffy", "foggy", "fragile", "frozen", "gentle",
    "giant", "glossy", "golden", "graceful", "grumpy", "hollow", "humble", "icy", "jolly", "keen",
    "lively", "lonely", "loud", "lucky", "marble", "mellow", "misty", "modern", "muddy", "narrow",
    "nimble", "noisy", "odd", "orange", "pale", "patient", "plain", "polite", "proud", "purple",
    "quiet", "rapid", "rare", "rusty", "sandy", "scarlet", "shiny", "silent", "silver", "sleepy",
    "slender", "smooth", "snowy", "sour", "spicy", "steady", "stormy", "sturdy", "sunny", "swift",
    "tall", "tame", "tender", "thirsty", "tidy", "tiny", "velvet", "vivid", "warm", "wild",
    "windy", "wise", "witty", "wooden", "young", "zealous",
)

NOUNS = (
    "acorn", "anchor", "apple", "arrow", "badger", "banjo", "basket", "beacon", "beetle", "bell",
    "blanket", "bottle", "bridge", "bucket", "cabin", "camel", "candle", "canyon", "carpet", "castle",
    "cedar", "cherry", "chimney", "cloud", "comet", "compass", "cottage", "crayon", "dragon", "drum",
    "eagle", "engine", "falcon", "feather", "fern", "fiddle", "forest", "fountain", "garden", "glacier",
    "goblet", "harbor", "helmet", "island", "jacket", "kettle", "kitten", "ladder", "lantern", "lemon",
    "lizard", "magnet", "meadow", "mirror", "mitten", "needle", "nutmeg", "oasis", "orchard", "otter",
    "paddle", "parrot", "pebble", "pepper", "piano", "pillow", "planet", "pocket", "puzzle", "quilt",
    "rabbit", "raven", "ribbon", "river", "rocket", "saddle", "sailor", "shovel", "spider", "spoon",
    "squirrel", "statue", "teapot", "thimble", "tiger", "tulip", "tunnel", "turtle", "valley", "violin",
    "wagon", "walnut", "whistle", "willow", "window", "wizard",
)
