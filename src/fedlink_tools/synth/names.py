"""Names of the synthetic population: first names by origin and sex, surnames by origin.

Each list is in order of popularity; :func:`zipf_weights` turns a list's length into Zipf-like
frequencies, so a few names are common and most are rare, as in real registers. Every name is
stored once in one vocabulary (:data:`NAME_VOCABULARY`) and people hold integer codes into it, which
keeps a population of millions cheap to build and to write.
"""

from __future__ import annotations

import unicodedata
from typing import Final

import numpy as np

ORIGINS: Final[tuple[str, ...]] = (
    "english",
    "irish_scottish",
    "south_asian",
    "west_african",
    "east_european",
    "east_asian",
    "arabic",
)

# fmt: off
# Male then female, most popular first.
FIRST_NAMES: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "english": (
        (
            "James", "John", "David", "Michael", "Thomas", "William", "Daniel", "Oliver", "George",
            "Harry", "Jack", "Robert", "Paul", "Richard", "Christopher", "Matthew", "Andrew", "Mark",
            "Peter", "Stephen", "Joshua", "Samuel", "Benjamin", "Charlie", "Jacob", "Alexander",
            "Joseph", "Edward", "Anthony", "Jonathan", "Nicholas", "Luke", "Adam", "Ryan", "Lewis",
            "Nathan", "Henry", "Alfie", "Freddie", "Archie", "Noah", "Oscar", "Leo", "Isaac",
            "Timothy", "Philip", "Gregory", "Frederick", "Kevin", "Gary", "Simon", "Ian", "Arthur",
            "Theodore", "Kenneth", "Ronald", "Raymond", "Martin", "Stuart", "José",
        ),
        (
            "Sarah", "Emma", "Olivia", "Emily", "Jessica", "Sophie", "Charlotte", "Hannah", "Amelia",
            "Elizabeth", "Rebecca", "Laura", "Lucy", "Grace", "Katherine", "Victoria", "Rachel",
            "Jennifer", "Helen", "Susan", "Margaret", "Patricia", "Deborah", "Karen", "Julie",
            "Nicola", "Michelle", "Amanda", "Claire", "Samantha", "Abigail", "Chloe", "Megan",
            "Lauren", "Natalie", "Joanne", "Christine", "Ella", "Lily", "Ava", "Mia", "Poppy",
            "Isabella", "Evie", "Freya", "Florence", "Alice", "Daisy", "Ivy", "Dorothy", "Barbara",
            "Caroline", "Catherine", "Zoë", "Eleanor", "Rosemary", "Harriet", "Renée",
        ),
    ),
    "irish_scottish": (
        (
            "Sean", "Patrick", "Liam", "Connor", "Callum", "Ciarán", "Declan", "Eoin", "Niall",
            "Seán", "Fraser", "Euan", "Kieran", "Darragh", "Hamish", "Angus", "Finlay", "Cormac",
            "Oisín", "Ruairidh",
        ),
        (
            "Niamh", "Aoife", "Ciara", "Siobhán", "Orla", "Róisín", "Sinéad", "Eilidh", "Isla",
            "Caitlin", "Fiona", "Kirsty", "Mairead", "Catriona", "Mhairi", "Bridget", "Maeve",
            "Shona",
        ),
    ),
    "south_asian": (
        (
            "Mohammed", "Muhammad", "Ali", "Imran", "Arjun", "Rahul", "Sanjay", "Amir", "Hassan",
            "Rajesh", "Vikram", "Aarav", "Gurpreet", "Sandeep", "Ravi", "Amit", "Kiran", "Harjit",
        ),
        (
            "Aisha", "Fatima", "Priya", "Anjali", "Sana", "Ayesha", "Nisha", "Pooja", "Simran",
            "Harleen", "Zara", "Sunita", "Meera", "Nadia", "Shabana", "Rukhsana", "Parveen",
        ),
    ),
    "west_african": (
        (
            "Emmanuel", "Kwame", "Kofi", "Oluwaseun", "Chukwuemeka", "Tunde", "Femi", "Chidi",
            "Kwabena", "Yaw", "Ibrahim", "Olumide", "Babajide", "Adebayo", "Samuel", "Obinna",
        ),
        (
            "Blessing", "Grace", "Chioma", "Ngozi", "Abena", "Ama", "Adaeze", "Folasade",
            "Funmilayo", "Yetunde", "Efua", "Akosua", "Precious", "Temitope", "Ifeoma", "Adwoa",
        ),
    ),
    "east_european": (
        (
            "Piotr", "Tomasz", "Krzysztof", "Michał", "Paweł", "Łukasz", "Wojciech", "Andrei",
            "Mihai", "Jakub", "Marek", "Adrian", "Darius", "Jānis", "Bogdan", "Marcin",
        ),
        (
            "Anna", "Katarzyna", "Agnieszka", "Magdalena", "Joanna", "Małgorzata", "Ioana",
            "Elena", "Andreea", "Monika", "Agata", "Kristina", "Ewa", "Zuzana", "Natalia", "Irina",
        ),
    ),
    "east_asian": (
        (
            "Wei", "Jun", "Hao", "Ming", "Jian", "Lei", "Tao", "Kenji", "Hiroshi", "Takeshi",
            "Min-jun", "Ji-ho", "Minh", "Duc", "Kai", "Yong",
        ),
        (
            "Mei", "Li", "Xiu", "Yan", "Hui", "Ying", "Yuki", "Sakura", "Aiko", "Ji-woo",
            "Seo-yeon", "Linh", "Thu", "Hoa", "Lan", "Mai",
        ),
    ),
    "arabic": (
        (
            "Mohammed", "Ahmed", "Omar", "Yusuf", "Khalid", "Hamza", "Ibrahim", "Mustafa", "Karim",
            "Tariq", "Abdullah", "Bilal", "Samir", "Rami", "Youssef", "Adnan",
        ),
        (
            "Fatima", "Maryam", "Aisha", "Layla", "Noor", "Yasmin", "Amira", "Leila", "Huda",
            "Salma", "Rania", "Hana", "Zainab", "Samira", "Mariam", "Reem",
        ),
    ),
}

SURNAMES: Final[dict[str, tuple[str, ...]]] = {
    "english": (
        "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas",
        "Johnson", "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards",
        "Hughes", "Green", "Hall", "Lewis", "Harris", "Clarke", "Jackson", "Wood", "Turner",
        "Martin", "Cooper", "Hill", "Ward", "Morris", "Moore", "Clark", "Lee", "King", "Baker",
        "Harrison", "Morgan", "Allen", "James", "Scott", "Phillips", "Watson", "Davis", "Parker",
        "Price", "Bennett", "Young", "Griffiths", "Mitchell", "Cook", "Carter", "Richardson",
        "Bailey", "Collins", "Bell", "Shaw", "Miller", "Cox", "Richards", "Marshall", "Anderson",
        "Simpson", "Ellis", "Adams", "Wilkinson", "Foster", "Chapman", "Powell", "Webb", "Rogers",
        "Gray", "Mason", "Hunt", "Holmes", "Palmer", "Mills", "Barnes", "Knight", "Lloyd",
        "Butler", "Russell", "Barker", "Fisher", "Stevens", "Jenkins", "Dixon", "Fletcher",
        "Howard", "Owen", "Harvey", "Graham", "Ford", "Pearson", "Gibson", "Andrews", "Saunders",
        "Payne", "Fox", "Dawson", "Spencer", "Lawrence", "Newman", "Armstrong", "Ashworth",
        "Pickering", "Featherstone", "St John", "D'Arcy",
    ),
    "irish_scottish": (
        "Murphy", "Kelly", "O'Brien", "Walsh", "O'Sullivan", "McCarthy", "O'Connor", "Byrne",
        "Ryan", "Doherty", "Campbell", "Stewart", "MacDonald", "MacLeod", "Robertson", "Ross",
        "McKenzie", "McLaughlin", "O'Neill", "Gallagher", "Quinn", "Kennedy", "Reid", "Docherty",
    ),
    "south_asian": (
        "Khan", "Patel", "Singh", "Ahmed", "Hussain", "Begum", "Ali", "Shah", "Sharma", "Kaur",
        "Gill", "Sandhu", "Chaudhry", "Iqbal", "Rahman", "Islam", "Mistry", "Desai", "Kumar",
        "Malik", "Bibi", "Akhtar",
    ),
    "west_african": (
        "Adebayo", "Okafor", "Mensah", "Owusu", "Boateng", "Adeyemi", "Okonkwo", "Asante",
        "Appiah", "Nwosu", "Eze", "Obi", "Afolabi", "Ogunleye", "Danso", "Osei", "Adjei", "Bello",
        "Sesay", "Oyelaran",
    ),
    "east_european": (
        "Nowak", "Kowalski", "Wiśniewski", "Wójcik", "Kowalczyk", "Kamiński", "Lewandowski",
        "Zieliński", "Popescu", "Ionescu", "Popa", "Kazlauskas", "Petrov", "Novák", "Horváth",
        "Dvořák", "Szabó", "Jankowski", "Mazur", "Krawczyk",
    ),
    "east_asian": (
        "Wang", "Li", "Zhang", "Chen", "Liu", "Wong", "Chan", "Lee", "Kim", "Park", "Nguyen",
        "Tran", "Pham", "Tanaka", "Suzuki", "Sato", "Huang", "Lin", "Ng", "Cheung", "Lam", "Ho",
    ),
    "arabic": (
        "Al-Sayed", "Haddad", "Hassan", "Mansour", "Nasser", "Abdullah", "Saleh", "Khalil",
        "Ibrahim", "Youssef", "Al-Amin", "El-Masri", "Farouk", "Hamdan", "Aziz", "Rahim", "Osman",
        "Jaber", "Darwish", "Al-Khouri",
    ),
}
# fmt: on


def _build_vocabulary() -> tuple[str, ...]:
    names: dict[str, None] = {}
    for origin in ORIGINS:
        male, female = FIRST_NAMES[origin]
        for name in (*male, *female, *SURNAMES[origin]):
            names.setdefault(name, None)
    return tuple(names)


#: Every embedded name once, in a fixed order; people refer to names by index into it.
NAME_VOCABULARY: Final[tuple[str, ...]] = _build_vocabulary()
_CODE_OF: Final[dict[str, int]] = {name: code for code, name in enumerate(NAME_VOCABULARY)}


def codes_of(names: tuple[str, ...]) -> np.ndarray:
    """The vocabulary codes (int32) of ``names``, in order."""
    return np.array([_CODE_OF[name] for name in names], dtype=np.int32)


def zipf_weights(count: int, exponent: float = 0.5) -> np.ndarray:
    """Probabilities for ``count`` names in popularity order, falling as ``1 / rank ** exponent``."""
    weights = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def strip_accents(text: str) -> str:
    """``text`` with diacritics removed (``"Zoë"`` -> ``"Zoe"``), as ASCII-only systems record it.

    Letters that do not decompose (``"Ł"``) are mapped by hand to their nearest ASCII letter.
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_UNDECOMPOSABLE))
    return "".join(char for char in decomposed if not unicodedata.combining(char))


_UNDECOMPOSABLE: Final = str.maketrans({"Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "ß": "ss", "Đ": "D", "đ": "d"})


def has_accents(text: str) -> bool:
    """Whether :func:`strip_accents` would change ``text``."""
    return not text.isascii()
