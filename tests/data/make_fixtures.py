"""Writes the dataset fixtures beside this file: `python tests/data/make_fixtures.py` rewrites the files.

Tests read data that lives in the repository, never `../shared` (a fresh clone has nothing beside it). The
records are composed here from small word lists and computed answers, seeded, so a rerun writes the same bytes:

- `alpaca_demo.json`: 300 SFT records in LLaMA-Factory's alpaca format (`instruction`, `input`, `output`, some
  with `system` and `history`). The first record is plain (no input) and the only one that mentions sourdough,
  which the browser test searches for. Six records are exact copies of earlier ones and six are near copies
  (one word of a long answer changed), so both dedup steps have something to remove.
- `dpo_demo.json`: 120 preference pairs in LLaMA-Factory's sharegpt preference format (`conversations`,
  `chosen`, `rejected`, each turn `from`/`value`). Some open with a system turn, some are multi-turn, and about
  one in four asks for a long times table, a pair longer than 256 tokens, so `max_length` leaves it out.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 14
ALPACA_ROWS = 300
DPO_PAIRS = 120
COPIES = 6  # exact copies, and as many near copies

FIRST = {"instruction": "Describe how to feed a sourdough starter.", "input": "",
         "output": "Feeding a sourdough starter takes two minutes a day! Discard about half of it, then stir in "
                   "equal weights of flour and lukewarm water until no dry flour is left. Cover the jar loosely "
                   "and leave it at room temperature; it should double within six to eight hours. If it smells "
                   "sharp or grows a grey liquid on top, it is hungry: feed it twice a day until it rises "
                   "reliably again."}

NAMES = ["Amara", "Bruno", "Chidi", "Dana", "Emeka", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kemi", "Lars", "Mina",
         "Nico", "Oona", "Pavel", "Quinn", "Rosa", "Sami", "Tova"]
ITEMS = ["pencils", "stamps", "lemons", "bolts", "postcards", "candles", "buttons", "seed packets"]
INGREDIENTS = ["rice", "flour", "lentils", "butter", "oats", "sugar", "cheese", "spinach"]
SUBJECTS = ["The gardener", "My neighbour", "A young engineer", "The committee", "Our teacher", "The old fisherman",
            "A curious child", "The night guard", "The baker", "Two volunteers"]
VERBS = [("painted", "painted"), ("repaired", "repaired"), ("wrote", "written"), ("found", "found"),
         ("built", "built"), ("chose", "chosen"), ("cleaned", "cleaned"), ("sold", "sold"), ("moved", "moved"),
         ("opened", "opened")]
OBJECTS = ["the blue fence", "a long letter", "the broken radio", "the wooden boat shed", "a small garden table",
           "the village map", "the front window", "a new kite", "the rusty gate", "the winning poster"]
WORDS = ["harbour", "lantern", "pepper", "umbrella", "orchestra", "meadow", "kettle", "education", "igloo", "quartz",
         "avenue", "biscuit", "cathedral", "dolphin", "elephant", "furniture", "giraffe", "horizon", "island",
         "jasmine", "keyboard", "library", "mountain", "notebook", "octopus", "parachute", "radio", "satellite",
         "tomato", "universe", "volcano", "window", "yoghurt", "zebra", "alphabet", "balloon", "calendar",
         "daffodil", "envelope", "festival"]
TIPS = {
    "keeping houseplants alive": [
        "Water only when the top two centimetres of soil feel dry, not on a fixed schedule.",
        "Put each plant where its light suits it: ferns like shade, succulents want a sunny sill.",
        "Use pots with drainage holes so roots never sit in standing water.",
        "Wipe dust off the leaves every few weeks so they can take in light.",
        "Feed them lightly in spring and summer and not at all in winter."],
    "learning to juggle": [
        "Start with one ball and throw it from hand to hand in an arc up to eye level.",
        "Add the second ball only when the first one lands in your hand without you looking.",
        "Practise over a bed so dropped balls do not roll away.",
        "Keep your elbows close to your body and let your forearms do the throwing.",
        "Stop while it still feels fun; ten minutes a day beats an hour once a week."],
    "saving money on groceries": [
        "Plan the week's meals before you shop and buy only what the plan needs.",
        "Compare the price per kilogram rather than the price per pack.",
        "Cook a large batch on Sunday and freeze portions for busy evenings.",
        "Shop after eating; hungry shoppers fill the basket with snacks.",
        "Buy fruit and vegetables that are in season, when they are cheapest."],
    "sleeping better": [
        "Go to bed and get up at the same time every day, weekends included.",
        "Keep the bedroom cool, dark and quiet.",
        "Put screens away half an hour before bed.",
        "Avoid coffee and strong tea after lunch.",
        "If you cannot fall asleep within twenty minutes, get up and read until you feel drowsy."],
    "writing a clear email": [
        "Say what you need in the first sentence.",
        "Write a subject line that would make sense in a search a month from now.",
        "Keep to one topic per email.",
        "Use short paragraphs and put any dates or numbers on their own line.",
        "Read it aloud once before sending to catch missing words."],
    "running a first five kilometres": [
        "Alternate one minute of running with two minutes of walking for the first week.",
        "Run slowly enough that you could still hold a conversation.",
        "Add no more than ten percent to your weekly distance.",
        "Rest a day between runs so your legs can recover.",
        "Buy shoes that fit well before spending money on anything else."],
    "studying for an exam": [
        "Test yourself with questions instead of rereading your notes.",
        "Spread study sessions over several days rather than cramming the night before.",
        "Explain each topic aloud as if teaching a friend.",
        "Do a past paper under timed conditions a week before the exam.",
        "Sleep properly the night before; tired brains recall less."],
    "keeping a tidy kitchen": [
        "Wash up as you cook so the sink is empty when the meal is ready.",
        "Give every tool a fixed place and put it back right after use.",
        "Wipe the counters every evening, even when they look clean.",
        "Empty the bin before it overflows, not after.",
        "Clear out the fridge once a week before the big shop."],
    "starting a vegetable patch": [
        "Pick the sunniest spot you have; most vegetables need six hours of sun.",
        "Begin with a small bed you can weed in ten minutes.",
        "Grow what your household actually eats.",
        "Mix compost into the soil before the first planting.",
        "Sow salad leaves every two weeks for a steady supply."],
    "learning a new language": [
        "Learn the hundred most common words first.",
        "Listen to a short podcast in the language every day.",
        "Speak from the first week, even if you make mistakes.",
        "Label things around your home with their names in the new language.",
        "Review new words the next day, then after three days, then after a week."],
    "cycling in the city": [
        "Ride a metre away from parked cars so an opening door cannot hit you.",
        "Make eye contact with drivers at junctions.",
        "Use lights front and back, even at dusk.",
        "Signal clearly and early before turning.",
        "Plan routes along quiet streets and cycle paths."],
    "hosting a dinner party": [
        "Cook dishes you have made before, not a new recipe.",
        "Prepare as much as possible the day before.",
        "Ask guests about allergies when you invite them.",
        "Set the table an hour before anyone arrives.",
        "Serve a simple dessert that needs no last-minute work."],
}
MESSAGE_TO = ["your sister", "a neighbour", "your landlord", "a colleague", "your football coach", "an old friend",
              "your cousin", "the school office"]
MESSAGE_WHY = {  # three parts of the body, each written three ways
    "to say you will be late for dinner": [
        ["I am running about {n} minutes late, so please start without me.",
         "I will be {n} minutes late tonight; do not wait for me to eat.",
         "Dinner will have to start without me, I am {n} minutes behind."],
        ["The bus broke down near the bridge and the next one is slow.",
         "A meeting ran over and I only just left the office.",
         "The road by the station is closed and the detour takes ages."],
        ["Keep a plate warm for me if you can.", "Save me some of the soup, please.",
         "I will pick up bread on the way as a peace offering."]],
    "to thank them for lending you a ladder": [
        ["Thank you so much for the ladder; the gutters are finally clear.",
         "The ladder was exactly what I needed to reach the loft hatch, thank you.",
         "Many thanks for lending me your ladder, the shed roof is fixed."],
        ["I will bring it back on {day} morning.", "It is leaning by your garage door now.",
         "I can drop it round on {day} after work."],
        ["Let me know if I can return the favour.", "Tea is on me next time you visit.",
         "Shout if you ever need my drill or the wheelbarrow."]],
    "to ask them to water your plants this weekend": [
        ["Could you water my plants while I am away this weekend?",
         "Would you mind looking after my plants this weekend?",
         "I am away this weekend and my plants will need some water."],
        ["The tomatoes on the balcony need a full can each evening.",
         "The big fern by the window is the thirsty one, the cacti need nothing.",
         "Everything in the kitchen needs a glass of water on {day}."],
        ["The spare key is with the caretaker.", "I left the key under the blue flowerpot.",
         "I will bring you a jar of jam from the trip as thanks."]],
    "to invite them to a picnic on Saturday": [
        ["We are having a picnic by the lake on Saturday at {n} past noon.",
         "Join us for a picnic in the park this Saturday from one o'clock.",
         "A few of us are meeting for a picnic on Saturday by the old oak tree."],
        ["Bring a blanket and something small to share if you like.",
         "We have plenty of food, so just bring yourself and maybe a frisbee.",
         "There will be lemonade, sandwiches and far too many biscuits."],
        ["If it rains we will move to the cafe on the corner.",
         "Let me know by {day} so I can plan the food.", "Children and dogs are welcome too."]],
    "to remind them about the library books": [
        ["Just a reminder that the library books are due back on {day}.",
         "The three library books on your desk have to go back by {day}.",
         "A quick note: our library loan ends this {day}."],
        ["The late fee starts the day after.", "You can renew them online if you have not finished.",
         "The librarian said there is a waiting list for the atlas."],
        ["I can drop them off on my way to work if that helps.", "Leave them by the door and I will take them.",
         "No rush on the cookbook, that one is mine."]],
    "to apologise for missing their call": [
        ["Sorry I missed your call earlier; my phone was on silent in a meeting.",
         "Apologies for not picking up, I was driving.",
         "I saw your missed call only now, sorry about that."],
        ["I am free after {n} past five today.", "Tomorrow morning works well for me.",
         "Any time this evening is fine."],
        ["Call again whenever suits you.", "Or send me a message if it is quick.",
         "I hope it was good news!"]],
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SYSTEMS = ["You are a patient maths tutor. Show your working.", "Answer in plain, friendly language.",
           "You are a concise assistant. Keep answers short."]


def plain(instruction: str, output: str, input_: str = "") -> dict:
    return {"instruction": instruction, "input": input_, "output": output}


def temperatures(rng: random.Random) -> list[dict]:
    asks = ["Convert this temperature to Fahrenheit.", "What is this temperature in degrees Fahrenheit?",
            "Express the temperature below in Fahrenheit."]
    out = []
    for c in rng.sample(range(-30, 101), 25):
        f = round(c * 9 / 5 + 32, 1)
        out.append(plain(rng.choice(asks), f"{c} degrees Celsius is {f:g} degrees Fahrenheit: multiply by 9/5 to "
                                           f"get {round(c * 9 / 5, 1):g}, then add 32.", f"{c} degrees Celsius"))
    return out


def sorting(rng: random.Random) -> list[dict]:
    asks = ["Sort these numbers from smallest to largest.", "Put the numbers in ascending order."]
    out = []
    for _ in range(25):
        nums = rng.sample(range(1, 500), rng.randint(5, 8))
        s = sorted(nums)
        out.append(plain(rng.choice(asks), f"{', '.join(map(str, s))}. The smallest is {s[0]} and the largest is "
                                           f"{s[-1]}.", ", ".join(map(str, nums))))
    return out


def word_problems(rng: random.Random) -> list[dict]:
    out = []
    for _ in range(20):
        name, item, n, p = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(3, 40), rng.randint(5, 95)
        out.append(plain(f"{name} buys {n} {item} at {p} cents each. How much does {name} pay?",
                         f"{n} x {p} cents = {n * p} cents, so {name} pays ${n * p / 100:.2f}."))
    for _ in range(20):
        v, t = rng.randrange(40, 180, 5), rng.randint(2, 9)
        out.append(plain(f"A train travels at {v} km/h for {t} hours. How far does it go?",
                         f"Distance is speed times time: {v} km/h x {t} h = {v * t} km."))
    for _ in range(20):
        name, s, goal = rng.choice(NAMES), rng.randint(5, 60), rng.randrange(200, 2000, 50)
        weeks = -(-goal // s)
        out.append(plain(f"{name} saves {s} dollars every week. How many weeks until {name} has {goal} dollars?",
                         f"{goal} / {s} = {goal / s:.2f}, and a part week does not count as saved, so {name} needs "
                         f"{weeks} weeks; after {weeks} weeks the savings are {weeks * s} dollars."))
    for _ in range(20):
        k, m, ing = rng.randint(2, 6), rng.randint(7, 20), rng.choice(INGREDIENTS)
        g = k * rng.randrange(20, 200, 5)  # a whole number of grams each
        out.append(plain(f"A recipe for {k} people needs {g} grams of {ing}. How much {ing} is needed for {m} "
                         f"people?", f"Each person needs {g} / {k} = {g // k} grams, so {m} people need "
                                     f"{m} x {g // k} = {g // k * m} grams of {ing}."))
    return out


def passive(rng: random.Random) -> list[dict]:
    combos = rng.sample([(s, v, o) for s in SUBJECTS for v in VERBS for o in OBJECTS], 45)
    asks = ["Rewrite the sentence in the passive voice.", "Change this sentence from active to passive voice."]
    return [plain(rng.choice(asks), f"{o[0].upper() + o[1:]} was {pp} by {s[0].lower() + s[1:]}.", f"{s} {past} {o}.")
            for s, (past, pp), o in combos]


def tips(rng: random.Random) -> list[dict]:
    out = []
    for activity, bank in TIPS.items():
        order = rng.sample(bank, len(bank))  # the two answers share one tip, or they would be near duplicates
        for ask, chosen in ((f"Give three tips for {activity}.", order[:3]),
                            (f"What should a beginner know about {activity}?", order[2:5])):
            out.append(plain(ask, "\n".join(f"{i}. {t}" for i, t in enumerate(chosen, 1))))
    return out


def vowels(rng: random.Random) -> list[dict]:
    asks = ["Count the vowels in this word.", "How many vowels does the word below have?"]
    out = []
    for w in rng.sample(WORDS, 40):
        found = [ch for ch in w if ch in "aeiou"]
        out.append(plain(rng.choice(asks), f"\"{w}\" has {len(found)} vowels: {', '.join(found)}.", w))
    return out


def messages(rng: random.Random) -> list[dict]:
    out = []
    for why, parts in MESSAGE_WHY.items():
        # no two messages for the same reason share all three parts: they would be near duplicates
        picks = rng.sample([(a, b, c) for a in range(3) for b in range(3) for c in range(3)], 5)
        for to, pick in zip(rng.sample(MESSAGE_TO, 5), picks):
            body = " ".join(parts[slot][i].format(n=rng.choice([10, 15, 20, 25, 40]), day=rng.choice(DAYS))
                            for slot, i in enumerate(pick))
            greeting, name = rng.choice(["Hi", "Hello", "Dear"]), rng.choice(NAMES)
            closing = rng.choice(["Thanks", "Best wishes", "See you soon"])
            out.append(plain(f"Write a short message to {to} {why}.",
                             f"{greeting} {name},\n\n{body}\n\n{closing},\nAlex"))
    return out


def with_context(rng: random.Random) -> list[dict]:
    """Records with an earlier exchange (alpaca's `history`), half of them with a system prompt."""
    out = []
    for _ in range(24):
        a, b, c = rng.randint(11, 99), rng.randint(11, 99), rng.randint(2, 12)
        rec = {"instruction": f"And what is that times {c}?", "input": "",
               "output": f"{a + b} x {c} = {(a + b) * c}.",
               "history": [[f"What is {a} + {b}?", f"{a} + {b} = {a + b}."]]}
        if rng.random() < 0.5:
            rec["system"] = rng.choice(SYSTEMS)
        out.append(rec)
    return out


def near_copy(rng: random.Random, rec: dict) -> dict:
    words = rec["output"].split(" ")
    i = rng.choice([i for i, w in enumerate(words) if w.isalpha()])
    words[i] = "indeed" if words[i] != "indeed" else "truly"
    return {**rec, "output": " ".join(words)}


def alpaca(rng: random.Random) -> list[dict]:
    pool = (temperatures(rng) + sorting(rng) + word_problems(rng) + passive(rng) + tips(rng) + vowels(rng)
            + messages(rng) + with_context(rng))
    for rec in rng.sample(pool, 20):  # some records without history get a system prompt too
        if "system" not in rec and "history" not in rec:
            rec["system"] = rng.choice(SYSTEMS)
    rng.shuffle(pool)
    rows = [FIRST] + pool[:ALPACA_ROWS - 1 - 2 * COPIES]
    long_ones = [r for r in rows[1:] if len(r["output"].split()) >= 40]
    for src in rng.sample(rows[1:], COPIES):
        rows.insert(rng.randrange(rows.index(src) + 1, len(rows) + 1), dict(src))
    for src in rng.sample(long_ones, COPIES):
        rows.insert(rng.randrange(rows.index(src) + 1, len(rows) + 1), near_copy(rng, src))
    assert len(rows) == ALPACA_ROWS and sum("sourdough" in json.dumps(r) for r in rows) == 1
    return rows


def turn(who: str, text: str) -> dict:
    return {"from": who, "value": text}


def dpo(rng: random.Random) -> list[dict]:
    pairs = [{"conversations": [turn("human", "What is 17 x 23?")],
              "chosen": turn("gpt", "17 x 23 = 391. Work it out as 17 x 20 = 340 plus 17 x 3 = 51."),
              "rejected": turn("gpt", "17 x 23 = 401.")}]
    while len(pairs) < DPO_PAIRS:
        roll = rng.random()
        if roll < 0.25:  # long: a whole times table
            k, m = rng.randint(3, 19), rng.randint(30, 45)
            table = [f"{k} x {i} = {k * i}" for i in range(1, m + 1)]
            wrong = list(table)
            j = rng.randrange(5, m)
            wrong[j] = f"{k} x {j + 1} = {k * (j + 1) + rng.choice([-10, -1, 1, 10])}"
            convo = [turn("human", f"Write out the {k} times table from {k} x 1 to {k} x {m}, one line each.")]
            chosen, rejected = "\n".join(table), "\n".join(wrong)
        elif roll < 0.5:
            a, b = rng.randint(12, 99), rng.choice([b for b in range(12, 100) if b % 10])
            convo = [turn("human", f"What is {a} x {b}?")]
            chosen = f"{a} x {b} = {a * b}. Work it out as {a} x {b // 10 * 10} = {a * (b // 10 * 10)} plus " \
                     f"{a} x {b % 10} = {a * (b % 10)}."
            rejected = f"{a} x {b} = {a * b + rng.choice([-100, -10, 10, 100])}."
        elif roll < 0.75:
            activity, bank = rng.choice(list(TIPS.items()))
            convo = [turn("human", f"Any advice on {activity}?")]
            chosen = "Here are a few ideas:\n" + "\n".join(f"- {t}" for t in rng.sample(bank, 3))
            rejected = rng.choice(["Just keep trying and it will work out.", "Everyone figures it out eventually.",
                                   "There is not much to say about that.", "Search the internet for it."])
        else:
            s, (past, pp), o = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
            convo = [turn("human", f"Rewrite in the passive voice: {s} {past} {o}.")]
            chosen = f"{o[0].upper() + o[1:]} was {pp} by {s[0].lower() + s[1:]}."
            rejected = rng.choice([f"{s} {past} {o}.", f"{s} has {pp} {o}.", f"{o[0].upper() + o[1:]} {past}."])
        if rng.random() < 0.2:  # an earlier exchange before the question
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            convo = [turn("human", f"What is {a} + {b}?"), turn("gpt", f"{a} + {b} = {a + b}."), *convo]
        if rng.random() < 0.25:
            convo = [turn("system", rng.choice(SYSTEMS)), *convo]
        pairs.append({"conversations": convo, "chosen": turn("gpt", chosen), "rejected": turn("gpt", rejected)})
    return pairs


def main() -> None:
    rng = random.Random(SEED)
    for name, records in [("alpaca_demo.json", alpaca(rng)), ("dpo_demo.json", dpo(rng))]:
        (HERE / name).write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
        print(f"{HERE / name}: {len(records)} records")


if __name__ == "__main__":
    main()
