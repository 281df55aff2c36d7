from typing import Final

SCORE_MAX: Final = 1000
INELIGIBLE: Final = -1

class Weights:
    battery: int
    link: int
    low_battery: int
    def __init__(self, battery: int = 600, link: int = 400, low_battery: int = 200) -> None: ...

DEFAULT_WEIGHTS: Weights

def is_low_battery(battery: int, mains: bool, weights: Weights = ...) -> bool: ...
def compute_score(
    battery: int, link: int, mains: bool = False, eligible: bool = True, weights: Weights = ...
) -> int: ...
def better(score_a: int, id_a: str, score_b: int, id_b: str) -> bool: ...
