"""Seeded demo logs: a support bot of several tenants, with known mistakes (same seed, same bytes).

``generate(out_dir, n_interactions, seed, ...)`` writes a landing-zone layout::

    out_dir/date=YYYY-MM-DD/generated-<tenant>-<YYYY-MM-DD>.jsonl   one file per tenant and day
    out_dir/truth.jsonl                          {interaction_id, mistake, intent, answer}

``generate_records(n, seed, ...)`` yields the same JSONL lines in memory (``iter_generated`` also
says which day/tenant/mistake/kind each line is).

What is in the logs:

* Tenants (``TENANTS``, cycled with a ``-2``, ``-3`` suffix when more are asked for): an
  electronics shop, an airline and a fintech, each with a small knowledge base (prices/fees and
  policies) so a right answer exists for every question: price questions, policy questions,
  order/booking status, refunds, contact-detail updates, payment problems, transfers, and a few
  requests for another customer's data that the bot rightly refuses.
* Sessions of 1-4 assistant turns (``turn_index`` 0..3), the context (``messages``) growing turn by
  turn; channels web/app/whatsapp/email; latency and token counts that follow reply length; model
  ``{provider: "acme", name: "support-bot"}``, version ``v1`` early, ``v2`` rolled out from 40% to
  70% of the days (v2 makes 40% fewer mistakes).
* The bot's recurring mistakes (``MISTAKE_RATES``, per assistant turn for v1): ``wrong_price``
  (the price/fee of the knowledge base, changed), ``hallucinated_policy`` (an invented policy),
  ``refusal`` (a valid request refused), ``pii_leak`` (another customer's e-mail or phone in the
  reply), ``truncated`` (the reply cut mid-sentence), ``off_topic`` (an unrelated reply).
* And one systematic mistake per tenant, as a real bot's stale knowledge base makes them: the
  price of the tenant's first item changed and the bot still quotes the old one
  (:func:`stale_price`), and its first policy changed and the bot still states the old text
  (``invented[0]`` of that policy), each in ``STALE_RATE`` of its otherwise right answers about
  that fact, by v1 and v2 alike (labelled ``wrong_price`` / ``hallucinated_policy``). A model
  trained on these logs learns the stale fact as the most likely answer; only the corrections
  teach the current one (what ``learnloop demo``'s candidate model has to learn).
* Users: explicit feedback is sparse (about 10% of good replies, 35% of bad ones; thumbs or a
  1-5 rating, sometimes a comment), and more negative after mistakes; signals
  (``user_continued``, ``abandoned``, ``requested_human``, ``completed_action``) on most records.
  After a mistake users more often abandon or ask for a human; human agents take over most of
  those and write the right answer (``human_correction`` with ``category`` = the mistake label).
* PII in user messages (e-mails, phone numbers, card numbers with a valid Luhn digit, IBANs with
  valid check digits) for the scrubber.
* About 1% malformed lines on purpose (``MALFORMED_KINDS``: invalid JSON, missing
  ``interaction_id``, rating 9, role ``"robot"``, timestamp ``"yesterday"``) and about 0.4% exact
  duplicate lines (at-least-once delivery: ingest drops them, it does not quarantine them).

The ground truth (``truth.jsonl``) lists every well-formed record once with its mistake (null when
the reply is right), its intent and ``answer``, the right reply to its question from the tenant's
knowledge base (the reply itself when there is no mistake; what a human agent would write); it is
never inside the records, so an auditor cannot see it. The demo reviewer (``ml.demo.reviewer``)
decides review items from it. Adding ``intent`` and ``answer`` changed no landing file: they come
from values the simulation had already drawn.

Everything comes from one ``random.Random(seed)`` and plain ``json.dumps`` on dicts: no clock, no
uuid, no pydantic, so the same arguments give byte-identical files, fast (see ``generate``'s
summary ``records_per_s``).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, NamedTuple

MISTAKES: tuple[str, ...] = (
    "wrong_price", "hallucinated_policy", "refusal", "pii_leak", "truncated", "off_topic",
)
# Per assistant turn of model v1 (v2: times V2_FACTOR). wrong_price needs a price question and
# hallucinated_policy a policy question: the question is chosen to fit the mistake.
MISTAKE_RATES: dict[str, float] = {
    "wrong_price": 0.05, "hallucinated_policy": 0.035, "refusal": 0.03, "pii_leak": 0.012,
    "truncated": 0.025, "off_topic": 0.02,
}
V2_FACTOR = 0.6
# share of the bot's otherwise right answers about a tenant's stale fact (its first item's price,
# its first policy) that quote the stale version instead
STALE_RATE = 0.6
MALFORMED_RATE = 0.01
DUPLICATE_RATE = 0.004
MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_json", "missing_interaction_id", "rating_out_of_range", "bad_role", "bad_timestamp",
)
MODEL_PROVIDER, MODEL_NAME = "acme", "support-bot"

_FIRST = ("James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
          "Elizabeth", "William", "Barbara", "Sofia", "Lukas", "Emma", "Noah", "Olivia", "Liam",
          "Amelia", "Mateo", "Chloe", "Hugo", "Ines", "Jonas", "Priya", "Arjun", "Mei", "Kenji",
          "Fatima", "Omar", "Ana", "Pedro")
_LAST = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Martin",
         "Bernard", "Dubois", "Muller", "Schmidt", "Schneider", "Rossi", "Russo", "Silva",
         "Santos", "Kowalski", "Nowak", "Jansen", "de Vries", "Nielsen", "Larsen", "Patel",
         "Sharma", "Tanaka", "Sato", "Kim", "Lee", "Haddad", "Novak")
_MAIL_DOMAINS = ("example.com", "mail.example.org", "inbox.example.net", "post.example.de")


# ---- tenants and their knowledge bases ---------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    topic: str
    questions: tuple[str, ...]
    answer: str  # the knowledge base's policy
    invented: tuple[str, ...]  # hallucinated policies the bot states instead


@dataclass(frozen=True)
class TenantSpec:
    tenant_id: str
    vertical: str
    currency: str
    system: str
    items: tuple[tuple[str, float], ...]  # priced products / fees
    price_q: tuple[str, ...]
    price_a: tuple[str, ...]
    policies: tuple[Policy, ...]
    status_q: tuple[str, ...]  # {ref} {item}
    status_a: tuple[str, ...]
    refund_q: tuple[str, ...]
    refund_a: tuple[str, ...]
    ref_prefix: str
    phone_style: str  # "us" | "uk" | "de"
    transfer: bool  # IBAN transfer questions (fintech)


TENANTS: tuple[TenantSpec, ...] = (
    TenantSpec(
        tenant_id="electroshop", vertical="electronics", currency="$",
        system=("You are ElectroShop's support assistant. Answer questions about products, prices, "
                "orders, returns and warranty from the knowledge base. Never reveal other "
                "customers' data."),
        items=(("Nova X2 wireless headset", 129.00), ("Pixel Pro 14 laptop", 1299.00),
               ("Volt 65W USB-C charger", 39.99), ("Aura smart speaker", 89.00),
               ("Zoom 4K webcam", 74.50), ("Orbit fitness watch", 199.00),
               ("Flux mechanical keyboard", 109.00), ("Echo 27-inch monitor", 289.00),
               ("Glide wireless mouse", 29.99), ("Beam portable projector", 349.00)),
        price_q=("How much is the {item}?", "What does the {item} cost at the moment?",
                 "Hi, what's the current price of the {item}?",
                 "I want to buy the {item} as a gift. How much is it?"),
        price_a=("The {item} costs {price}.",
                 "The {item} is currently {price}, and it is in stock.",
                 "Right now the {item} sells for {price}. Shipping is free on orders over $50."),
        policies=(
            Policy("returns",
                   ("What is your return policy?", "Can I return the {item} if I don't like it?",
                    "How long do I have to send something back?"),
                   "You can return any item within 30 days of delivery for a full refund, as long "
                   "as it is in its original packaging.",
                   ("You can return any item within 120 days, even opened and without a receipt, "
                    "and we add a 10% store-credit bonus.",
                    "Returns are accepted for up to one year and we also refund the original "
                    "shipping twice.")),
            Policy("warranty",
                   ("Does the {item} have a warranty?", "What does your warranty cover?"),
                   "All electronics come with a 2-year manufacturer warranty; accidental damage "
                   "is not covered.",
                   ("Every product has a lifetime warranty that also covers accidental and water "
                    "damage.",
                    "Our warranty includes a free replacement device every year, no questions "
                    "asked.")),
            Policy("shipping",
                   ("How long does shipping take?", "Do you charge for delivery?"),
                   "Shipping is free on orders over $50; standard delivery takes 3-5 business "
                   "days.",
                   ("We offer free same-day drone delivery on every order, anywhere in the "
                    "country.",)),
            Policy("price_match",
                   ("Do you match prices from other shops?",
                    "I saw the {item} cheaper elsewhere. Can you match it?"),
                   "We match the price of authorised retailers within 14 days of purchase.",
                   ("We beat any competitor's price by 25%, including marketplace sellers and "
                    "auctions.",)),
        ),
        status_q=("Where is my order {ref}?", "My order {ref} for the {item} hasn't arrived yet.",
                  "Can you check the status of order {ref}?"),
        status_a=("Order {ref} shipped yesterday and should arrive within 2 business days. You "
                  "can follow it under My Orders.",
                  "Your order {ref} is with the carrier and is scheduled for delivery tomorrow."),
        refund_q=("I returned the {item} last week. When do I get my refund for order {ref}?",
                  "I want a refund for order {ref}, the {item} arrived broken."),
        refund_a=("Refunds go back to your original payment method within 5-7 business days "
                  "after we receive the return.",
                  "I have opened a refund for order {ref}; it reaches your original payment "
                  "method within 5-7 business days."),
        ref_prefix="ES-", phone_style="us", transfer=False,
    ),
    TenantSpec(
        tenant_id="skyways", vertical="airline", currency="€",
        system=("You are SkyWays' virtual agent. Help passengers with bookings, baggage, fees, "
                "refunds and travel policies using the knowledge base. Never reveal other "
                "passengers' data."),
        items=(("checked bag up to 23 kg", 35.00), ("seat selection", 15.00),
               ("extra legroom seat", 45.00), ("flight change fee", 75.00),
               ("priority boarding", 12.00), ("pet in the cabin", 60.00),
               ("sports equipment bag", 50.00), ("lounge access", 39.00)),
        price_q=("How much does a {item} cost?", "What is the price for {item}?",
                 "Hi! How much do you charge for {item}?"),
        price_a=("The {item} costs {price} per flight.", "Adding {item} costs {price} per "
                 "passenger and flight.", "It's {price} for {item}, per flight."),
        policies=(
            Policy("cancellation",
                   ("Can I cancel my flight for free?", "What happens if I cancel my booking?"),
                   "You can cancel free of charge within 24 hours of booking if departure is at "
                   "least 7 days away; after that the fare rules of your ticket apply.",
                   ("You can cancel any flight for free up to one hour before departure and get "
                    "a full cash refund.",)),
            Policy("delay",
                   ("My flight was delayed 4 hours. Do I get compensation?",
                    "What are my rights if my flight is delayed?"),
                   "For delays over 3 hours on EU flights you may be entitled to compensation "
                   "under EU261; you can claim it in the Manage Booking section.",
                   ("Every delay over 30 minutes gives you a free return flight voucher "
                    "automatically.",
                    "We pay a fixed compensation of €1,000 for any delay, whatever the "
                    "reason.")),
            Policy("baggage",
                   ("What's the cabin baggage allowance?", "How big can my carry-on be?"),
                   "Every ticket includes one cabin bag up to 8 kg and 55 x 40 x 23 cm, plus a "
                   "small personal item.",
                   ("Each passenger may bring three cabin bags of any size at no cost.",)),
            Policy("infants",
                   ("Can my baby fly on my lap?", "Do infants need their own seat?"),
                   "Children under 2 can travel on an adult's lap; one infant per adult.",
                   ("Infants fly for free in their own seat with a complimentary nanny service "
                    "on board.",)),
        ),
        status_q=("Is my flight on booking {ref} still on time?",
                  "Can I change my booking {ref} to a later flight?",
                  "I haven't received the e-ticket for booking {ref}."),
        status_a=("Booking {ref} is confirmed and the flight is on time; check-in opens 24 hours "
                  "before departure.",
                  "Yes, booking {ref} can be moved to a later flight in Manage Booking; the "
                  "change fee and any fare difference apply."),
        refund_q=("My flight on booking {ref} was cancelled. How do I get my money back?",
                  "When will I receive the refund for booking {ref}?"),
        refund_a=("Refunds for cancelled flights go back to the original payment method within "
                  "7 business days.",
                  "I have requested the refund for booking {ref}; it reaches your original "
                  "payment method within 7 business days."),
        ref_prefix="SW", phone_style="uk", transfer=False,
    ),
    TenantSpec(
        tenant_id="finflow", vertical="fintech", currency="€",
        system=("You are FinFlow's support assistant. Answer questions about the account, cards, "
                "fees, transfers and disputes from the knowledge base. Never reveal other "
                "customers' data."),
        items=(("card replacement", 5.00), ("international transfer", 2.50),
               ("Premium plan", 9.99), ("ATM withdrawal abroad", 2.00),
               ("express card delivery", 15.00), ("Metal plan", 14.99)),
        price_q=("How much is the {item}?", "What's the fee for the {item}?",
                 "Do you charge for the {item}? How much?"),
        price_a=("The {item} costs {price}.", "The fee for the {item} is {price}.",
                 "You pay {price} for the {item}; everything else in your plan stays free."),
        policies=(
            Policy("disputes",
                   ("How long do I have to dispute a card payment?",
                    "I don't recognise a payment. What can I do?"),
                   "You can dispute a card payment within 120 days from the app: open the "
                   "payment and tap 'Report a problem'.",
                   ("We refund any card payment you dispute immediately and without checks.",)),
            Policy("limits",
                   ("What are the transfer limits?", "Is there a daily limit on transfers?"),
                   "You can send up to €10,000 per day; higher amounts need a verified source "
                   "of funds.",
                   ("There are no transfer limits at all, you can send any amount instantly.",)),
            Policy("closure",
                   ("How do I close my account?", "Can I close my account and keep my data?"),
                   "You can close your account in Settings once your balance is zero; we keep "
                   "records for 5 years as the law requires.",
                   ("Closing your account pays you a €50 loyalty bonus and deletes all your data "
                    "immediately.",)),
            Policy("interest",
                   ("Do you pay interest on savings?", "What's the interest rate on my balance?"),
                   "Savings vaults earn 2.1% a year, paid monthly; the main balance earns no "
                   "interest.",
                   ("Every balance earns 9% interest per year, guaranteed for life.",)),
        ),
        status_q=("Where is my new card? I ordered it with reference {ref}.",
                  "My transfer {ref} still shows as pending."),
        status_a=("Card order {ref} was posted 2 days ago; delivery takes 3-5 business days.",
                  "Transfer {ref} is being processed and will complete within 1 business day."),
        refund_q=("A merchant promised a refund, reference {ref}. When will I see it?",
                  "I was charged twice for the same purchase, reference {ref}. Can you refund "
                  "one?"),
        refund_a=("Merchant refunds usually appear within 5-10 business days after the merchant "
                  "sends them.",
                  "I have raised a claim for the duplicate charge {ref}; you will hear from us "
                  "within 10 business days."),
        ref_prefix="FF", phone_style="de", transfer=True,
    ),
)

_OFF_TOPIC = (
    "Our spring newsletter is out: discover five tips to keep your houseplants healthy.",
    "The weather in Lisbon is usually mild in October, perfect for a city trip.",
    "Did you know that honey never spoils? Archaeologists found edible honey in ancient tombs.",
    "Here is a great recipe for banana bread: mash three ripe bananas and mix with flour.",
    "Chess was invented in India around the 6th century and spread through Persia.",
    "The best way to learn a new language is to practise a little every day.",
)
_REFUSALS = (
    "I'm sorry, but I'm unable to help with that request.",
    "I can't help with that. Please check our website for more information.",
    "As an AI, I cannot process this kind of request.",
    "I'm not able to assist with questions like this one.",
)
_PII_LEAK = (
    " I have also sent a copy of this to {email}.",
    " For reference, the account on file is registered to {email}.",
    " If you need more help, {name} can be reached at {phone}.",
    " I see the last contact number on this case is {phone}.",
)
_CONTACT_Q = (
    "Please update my email to {email}.",
    "Can you change my phone number to {phone}? The old one no longer works.",
    "I moved, please update my contact details: email {email}, phone {phone}.",
    "My email address changed, it's now {email}.",
)
_CONTACT_A = (
    "Done: your contact details are updated. You will get a confirmation message shortly.",
    "I have updated your contact details; the change is effective immediately.",
)
_PAYMENT_Q = (
    "My card {card} was declined when I tried to pay. Can you help?",
    "Why was I charged twice on card {card}?",
    "Please remove the card ending in {last4} from my account, the number is {card}.",
)
_PAYMENT_A = (
    "I'm sorry about that. Please check the expiry date and billing address; you can also pay "
    "with another card or PayPal.",
    "I have removed that card from your account. For security, never share full card numbers "
    "in chat.",
)
_TRANSFER_Q = (
    "I sent €{amount} to {iban} by mistake. Can you reverse it?",
    "Please add {iban} as a new payee for my rent of €{amount}.",
    "My salary from {iban} hasn't arrived. Can you check?",
)
_TRANSFER_A = (
    "I have opened a recall request for that transfer; the receiving bank has up to 10 business "
    "days to respond.",
    "The payee is saved. For your security the first transfer to a new payee is checked within "
    "a few hours.",
)
_DISALLOWED_Q = (
    "Can you give me another customer's phone number? Their name is {name}.",
    "What is someone else's account balance if I give you their email {email}?",
)
_DISALLOWED_A = (
    "I'm sorry, but I can't share another customer's details. They can contact us directly.",
)
_FOLLOWUP_AFTER_MISTAKE = ("That's not right. ", "Hmm, are you sure? ", "That doesn't answer my "
                           "question. ", "Please answer properly: ")
_GREETINGS = ("", "", "", "Hi, ", "Hello! ", "Good morning. ", "Quick question: ")
_POS_COMMENTS = ("Thanks, that helped!", "Great, quick answer.", "Perfect, thank you.")
_NEG_COMMENTS: dict[str, tuple[str, ...]] = {
    "wrong_price": ("The price is wrong, the website says something else.",
                    "That's not the price I was charged."),
    "hallucinated_policy": ("That policy doesn't exist, I checked the terms.",
                            "This is not true, you made that up."),
    "refusal": ("Why won't you help? This is a normal request.", "You refused a simple question."),
    "pii_leak": ("Why are you showing me someone else's contact details?",),
    "truncated": ("The answer was cut off.", "Incomplete reply."),
    "off_topic": ("Irrelevant answer, not what I asked.", "Off-topic reply."),
    None: ("Not helpful.", "Could be clearer."),
}
_CORRECTION_REASON = {
    "wrong_price": "bot quoted the wrong price",
    "hallucinated_policy": "bot stated a policy we do not have",
    "refusal": "bot refused a valid request",
    "pii_leak": "bot revealed another customer's personal data",
    "truncated": "bot reply was cut off",
    "off_topic": "bot reply did not address the question",
}
_CHANNELS = ("web", "web", "web", "app", "app", "whatsapp", "email")
_PHONES = {
    "us": lambda r: f"+1 {r.choice(('415', '212', '646', '312'))}-555-{r.randrange(100, 200):04d}",
    "uk": lambda r: (f"+44 20 7946 {r.randrange(10000):04d}" if r.random() < 0.6
                     else f"020 7946 {r.randrange(10000):04d}"),
    "de": lambda r: (f"+49 30 {r.randrange(1000, 10000)} {r.randrange(1000, 10000)}"
                     if r.random() < 0.6 else f"030 {r.randrange(1000, 10000)}"
                                              f"{r.randrange(1000, 10000)}"),
}


# ---- PII values --------------------------------------------------------------------------------

def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def make_card(rng: random.Random) -> str:
    """A 16-digit Visa/Mastercard-shaped number with a valid Luhn digit, in groups of four."""
    head = "4" if rng.random() < 0.6 else f"5{rng.randrange(1, 6)}"
    payload = head + "".join(str(rng.randrange(10)) for _ in range(15 - len(head)))
    num = payload + luhn_check_digit(payload)
    return " ".join(num[i:i + 4] for i in range(0, 16, 4))


def make_iban(rng: random.Random) -> str:
    """A German IBAN (22 characters) with valid mod-97 check digits, in groups of four."""
    bban = "".join(str(rng.randrange(10)) for _ in range(18))
    check = 98 - int(bban + "131400") % 97  # D=13, E=14, check digits 00
    iban = f"DE{check:02d}{bban}"
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))


@dataclass(frozen=True)
class Customer:
    name: str
    email: str
    phone: str
    card: str
    iban: str


def _customers(rng: random.Random, spec: TenantSpec, n: int) -> list[Customer]:
    out = []
    phone = _PHONES[spec.phone_style]
    for _ in range(n):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        local = f"{first}.{last.replace(' ', '')}".lower()
        if rng.random() < 0.5:
            local += str(rng.randrange(1, 100))
        out.append(Customer(f"{first} {last}", f"{local}@{rng.choice(_MAIL_DOMAINS)}",
                            phone(rng), make_card(rng), make_iban(rng)))
    return out


# ---- the simulation ----------------------------------------------------------------------------

_MISTAKE_JSON = {m: json.dumps(m) for m in (None, *MISTAKES)}
_dumps = json.dumps
_encode = json.JSONEncoder(check_circular=False).encode  # == json.dumps(obj), a bit faster


class GeneratedLine(NamedTuple):
    day: str  # YYYY-MM-DD (the landing partition)
    tenant_id: str
    line: str  # one JSONL line, no newline
    interaction_id: str | None  # None for a line without one (malformed)
    mistake: str | None
    kind: str  # "ok", "duplicate" or one of MALFORMED_KINDS
    intent: str | None = None  # the record's metadata.intent
    answer: str | None = None  # the right reply to the question (the reply itself when no mistake)


@dataclass
class _Tenant:
    spec: TenantSpec
    tenant_id: str
    customers: list[Customer]
    system_msg: dict[str, str]
    agents: tuple[str, ...]


def _money(cur: str, v: float) -> str:
    return f"{cur}{v:,.2f}"


def _wrong_price(rng: random.Random, true: float) -> float:
    for _ in range(8):
        v = round(true * rng.choice((0.5, 0.75, 0.8, 1.25, 1.5, 2.0, 10.0)), 2)
        if rng.random() < 0.3:
            v = round(true + rng.choice((-10, -5, 5, 10, 20)), 2)
        if v > 0 and abs(v - true) >= 0.01:
            return v
    return round(true + 1.0, 2)


def stale_price(true: float) -> float:
    """The outdated price the bot's knowledge base still holds for a stale item: 20% above the
    current one, ending in .99."""
    return math.floor(true * 1.2) + 0.99


def _truncate(rng: random.Random, text: str) -> str:
    """Cut at a word boundary 40-75% in, leaving no terminal punctuation (mid-sentence)."""
    cut = int(len(text) * rng.uniform(0.4, 0.75))
    sp = text.rfind(" ", 0, cut)
    if sp <= 0:
        sp = max(1, cut)
    out = text[:sp].rstrip(" .,;:!?'\")")
    return out or text.split(" ", 1)[0].rstrip(" .,;:!?")


def _check_args(n: int, seed: int, tenants: int, days: int, start: str) -> date:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n_interactions: expected an integer >= 1, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if not isinstance(tenants, int) or not 1 <= tenants <= 99:
        raise ValueError(f"tenants: expected an integer 1-99, got {tenants!r}")
    if not isinstance(days, int) or not 1 <= days <= 3660:
        raise ValueError(f"days: expected an integer 1-3660, got {days!r}")
    try:
        return date.fromisoformat(start)
    except (TypeError, ValueError):
        raise ValueError(f"start: expected a YYYY-MM-DD date, got {start!r}") from None


def iter_generated(n: int, seed: int, tenants: int = 3, days: int = 7,
                   start: str = "2026-11-01") -> Iterator[GeneratedLine]:
    """Exactly ``n`` JSONL lines (records, malformed lines and exact duplicates), in day order."""
    start_day = _check_args(n, seed, tenants, days, start)
    rng = random.Random(seed)
    day_names = [(start_day + timedelta(days=d)).isoformat() for d in range(days)]
    ts_tenants: list[_Tenant] = []
    for t in range(tenants):
        spec = TENANTS[t % len(TENANTS)]
        tid = spec.tenant_id if t < len(TENANTS) else f"{spec.tenant_id}-{t // len(TENANTS) + 1}"
        ts_tenants.append(_Tenant(spec, tid, _customers(rng, spec, 400),
                                  {"role": "system", "content": spec.system},
                                  tuple(f"{tid}-agent-{k:02d}" for k in range(1, 9))))
    rates_v1 = [(m, MISTAKE_RATES[m]) for m in MISTAKES]
    cum_v1, cum_v2 = [], []
    a = b = 0.0
    for m, r in rates_v1:
        a += r
        b += r * V2_FACTOR
        cum_v1.append((a, m))
        cum_v2.append((b, m))
    emitted = 0
    rnd = rng.random

    def randrange(k: int) -> int:  # one C call: much faster than Random.randrange
        return int(rnd() * k)

    def choice(seq):
        return seq[int(rnd() * len(seq))]

    while emitted < n:
        d = emitted * days // n
        day = day_names[d]
        tenant = ts_tenants[randrange(tenants)]
        spec = tenant.spec
        frac = (emitted * days % n) / n
        sec = int(frac * 84000) + randrange(600)
        p_v2 = min(1.0, max(0.0, (d + 0.5 - days * 0.4) / (days * 0.3))) if days > 1 else 0.0
        v2 = rnd() < p_v2
        cum = cum_v2 if v2 else cum_v1
        model = {"provider": MODEL_PROVIDER, "name": MODEL_NAME, "version": "v2" if v2 else "v1"}
        session_id = f"sess-{rng.getrandbits(64):016x}"
        channel = choice(_CHANNELS)
        me = choice(tenant.customers)
        ctx: list[dict[str, str]] = [tenant.system_msg]
        ctx_chars = len(spec.system)
        planned = choice((1, 1, 1, 2, 2, 2, 3, 3, 4))
        prev_mistake: str | None = None
        prev_qa: tuple = ()
        for turn in range(planned):
            if emitted >= n:
                break
            # -- the bot's mistake (if any), then a question that fits it
            r = rnd()
            mistake = None
            if r < cum[-1][0]:
                for edge, m in cum:
                    if r < edge:
                        mistake = m
                        break
            # after a mistake the user often asks the same question again (when it fits the
            # bot's next mistake: a wrong price needs a price question, an invented policy a
            # policy question)
            if (prev_mistake is not None and rnd() < 0.5
                    and not (mistake == "wrong_price" and prev_qa[4] is None)
                    and not (mistake == "hallucinated_policy" and prev_qa[3] is None)):
                base_q, answer, intent, topic, price_info = prev_qa
                q = choice(_FOLLOWUP_AFTER_MISTAKE) + base_q
            else:
                base_q, answer, intent, topic, price_info = _question(rng, tenant, me, mistake)
                q = choice(_GREETINGS) + base_q if turn == 0 else base_q
            prev_qa = (base_q, answer, intent, topic, price_info)
            user_msg = {"role": "user", "content": q}
            # -- the reply (a right answer about a stale fact quotes the stale version often)
            if mistake is None and (
                    (price_info is not None and price_info[0] == spec.items[0][0])
                    or (topic is not None and topic is spec.policies[0])) \
                    and rnd() < STALE_RATE:
                mistake = "wrong_price" if price_info is not None else "hallucinated_policy"
            if mistake is None:
                response = answer
            elif mistake == "wrong_price" and price_info[0] == spec.items[0][0]:
                item, true_price, tmpl = price_info
                response = tmpl.format(item=item, price=_money(spec.currency,
                                                              stale_price(true_price)))
            elif mistake == "hallucinated_policy" and topic is spec.policies[0]:
                response = topic.invented[0]
            elif mistake == "wrong_price":
                item, true_price, tmpl = price_info
                response = tmpl.format(item=item, price=_money(spec.currency,
                                                              _wrong_price(rng, true_price)))
            elif mistake == "hallucinated_policy":
                response = choice(topic.invented)
            elif mistake == "refusal":
                response = choice(_REFUSALS)
            elif mistake == "pii_leak":
                other = choice(tenant.customers)
                while other is me:
                    other = choice(tenant.customers)
                response = answer + choice(_PII_LEAK).format(email=other.email, name=other.name,
                                                             phone=other.phone)
            elif mistake == "truncated":
                response = _truncate(rng, answer)
            else:  # off_topic
                response = choice(_OFF_TOPIC)
            # -- what the user does next
            last = turn == planned - 1
            requested_human, abandoned, continued, completed = user_signals(rnd, mistake, last)
            # -- the record
            completion = len(response) // 4 + 1 + randrange(4)
            prompt_chars = len(q) + ctx_chars
            latency = round(300 + completion * 18 + rng.expovariate(1 / 400), 1)
            sec += int(latency / 1000) + (5 + randrange(85) if turn else 0)
            hh, rem = divmod(sec, 3600)
            mm, ss = divmod(rem, 60)
            iid = f"{rng.getrandbits(128):032x}"
            iid = f"{iid[:8]}-{iid[8:12]}-{iid[12:16]}-{iid[16:20]}-{iid[20:]}"
            rec: dict[str, Any] = {
                "interaction_id": iid,
                "tenant_id": tenant.tenant_id,
                "session_id": session_id,
                "turn_index": turn,
                "timestamp": f"{day}T{hh:02d}:{mm:02d}:{ss:02d}.{randrange(1000):03d}Z",
                "channel": channel,
                "model": model,
                "messages": ctx + [user_msg],
                "response": response,
                "latency_ms": latency,
                "tokens": {"prompt": prompt_chars // 4 + 8, "completion": completion},
            }
            if topic is not None and rnd() < 0.6:
                rec["retrieval"] = [{"source": f"kb/{tenant.tenant_id}/{intent}/{topic.topic}",
                                     "score": round(0.55 + 0.4 * rnd(), 3)}]
            elif price_info is not None and rnd() < 0.6:
                rec["retrieval"] = [{"source": f"kb/{tenant.tenant_id}/prices",
                                     "score": round(0.55 + 0.4 * rnd(), 3)}]
            fb = _feedback(rng, mistake, requested_human)
            if fb is not None:
                rec["feedback"] = fb
            if rnd() < 0.85:
                rec["signals"] = {"user_continued": continued, "abandoned": abandoned,
                                  "requested_human": requested_human,
                                  "completed_action": completed}
            if mistake is not None and requested_human and rnd() < 0.75:
                rec["human_correction"] = {"agent_id": choice(tenant.agents),
                                           "corrected_response": answer,
                                           "reason": _CORRECTION_REASON[mistake],
                                           "category": mistake}
            rec["metadata"] = {"intent": intent, "language": "en", "tags": [spec.vertical]}
            # -- the line, sometimes malformed, sometimes delivered twice
            tenant_id = tenant.tenant_id
            if rnd() < MALFORMED_RATE:
                kind = choice(MALFORMED_KINDS)
                line = _malformed(rec, kind)
                yield GeneratedLine(day, tenant_id, line,
                                    None if kind == "missing_interaction_id" else iid, None, kind,
                                    intent, answer)
                emitted += 1
            else:
                line = _encode(rec)
                yield GeneratedLine(day, tenant_id, line, iid, mistake, "ok", intent, answer)
                emitted += 1
                if emitted < n and rnd() < DUPLICATE_RATE:
                    yield GeneratedLine(day, tenant_id, line, iid, mistake, "duplicate", intent,
                                        answer)
                    emitted += 1
            # -- the session goes on, or ends
            if not continued:
                break
            ctx = ctx + [user_msg, {"role": "assistant", "content": response}]
            ctx_chars += len(q) + len(response)
            prev_mistake = mistake


def _question(rng: random.Random, tenant: _Tenant, me: Customer, mistake: str | None):
    """(question, right answer, intent, policy or None, (item, price, answer template) or None)."""
    spec = tenant.spec
    rnd = rng.random

    def choice(seq):
        return seq[int(rnd() * len(seq))]
    if mistake == "wrong_price":
        kind = "price"
    elif mistake == "hallucinated_policy":
        kind = "policy"
    else:
        r = rnd()
        if r < 0.26:
            kind = "price"
        elif r < 0.48:
            kind = "policy"
        elif r < 0.64:
            kind = "status"
        elif r < 0.76:
            kind = "refund"
        elif r < 0.86:
            kind = "contact"
        elif r < 0.93:
            kind = "transfer" if spec.transfer else "payment"
        elif r < 0.98 or mistake is not None:
            kind = "payment"
        else:
            kind = "other_customer"  # refusing is right here
    item, price = choice(spec.items)
    if kind == "price":
        tmpl = choice(spec.price_a)
        return (choice(spec.price_q).format(item=item),
                tmpl.format(item=item, price=_money(spec.currency, price)),
                "price", None, (item, price, tmpl))
    if kind == "policy":
        pol = choice(spec.policies)
        return choice(pol.questions).format(item=item), pol.answer, "policy", pol, None
    if kind in ("status", "refund"):
        ref = f"{spec.ref_prefix}{1_000_000 + int(rnd() * 9_000_000)}"
        qs, ans = (spec.status_q, spec.status_a) if kind == "status" else (spec.refund_q,
                                                                             spec.refund_a)
        k = int(rnd() * len(ans))
        q = choice(qs).format(ref=ref, item=item)
        if rnd() < 0.12:
            q += f" You can reach me at {me.email if rnd() < 0.6 else me.phone}."
        intent = ("booking" if spec.vertical == "airline" else "order") if kind == "status" \
            else "refund"
        return q, ans[k].format(ref=ref), intent, None, None
    if kind == "contact":
        return (choice(_CONTACT_Q).format(email=me.email, phone=me.phone), choice(_CONTACT_A),
                "account", None, None)
    if kind == "transfer":
        amount = choice((25, 80, 150, 420, 950, 1200))
        return (choice(_TRANSFER_Q).format(amount=amount, iban=me.iban), choice(_TRANSFER_A),
                "transfer", None, None)
    if kind == "payment":
        return (choice(_PAYMENT_Q).format(card=me.card, last4=me.card[-4:]),
                choice(_PAYMENT_A), "payment", None, None)
    other = choice(tenant.customers)
    return (choice(_DISALLOWED_Q).format(name=other.name, email=other.email),
            _DISALLOWED_A[0], "other_customer_data", None, None)


def user_signals(rnd, mistake: str | None, last: bool) -> tuple[bool, bool, bool, bool]:
    """What a user does after a reply (``rnd``: the stream's ``random``): (requested_human,
    abandoned, continued, completed_action). After a mistake users ask for a human or leave far
    more often; only the last planned turn can complete the action."""
    r = rnd()
    if mistake is not None:
        requested_human = r < (0.3 if last else 0.25)
        abandoned = not requested_human and r < (0.75 if last else 0.5)
    else:
        requested_human = r < 0.02
        abandoned = not requested_human and r < (0.15 if last else 0.05)
    continued = not last and not requested_human and not abandoned
    completed = mistake is None and last and not requested_human and rnd() < 0.7
    return requested_human, abandoned, continued, completed


def _feedback(rng: random.Random, mistake: str | None, requested_human: bool
              ) -> dict[str, Any] | None:
    rnd = rng.random
    if mistake is None:
        if rnd() >= (0.2 if requested_human else 0.1):
            return None
        negative = requested_human or rnd() < 0.06
    else:
        if rnd() >= (0.5 if requested_human else 0.33):
            return None
        negative = rnd() < 0.88
    fb: dict[str, Any] = {}
    if rnd() < 0.6:
        fb["thumbs"] = "down" if negative else "up"
    else:
        fb["rating"] = (1, 1, 2)[int(rnd() * 3)] if negative else (3, 4, 4, 5, 5, 5)[int(rnd() * 6)]
    if rnd() < (0.45 if negative else 0.15):
        pool = _NEG_COMMENTS[mistake] if negative else _POS_COMMENTS
        fb["comment"] = pool[int(rnd() * len(pool))]
    return fb


def _malformed(rec: dict[str, Any], kind: str) -> str:
    bad = dict(rec)
    if kind == "invalid_json":
        line = _encode(bad)
        return line[: len(line) // 2]  # a write cut short
    if kind == "missing_interaction_id":
        del bad["interaction_id"]
    elif kind == "rating_out_of_range":
        bad["feedback"] = {**(bad.get("feedback") or {}), "rating": 9}
    elif kind == "bad_role":
        msgs = list(bad["messages"])
        msgs[-1] = {**msgs[-1], "role": "robot"}
        bad["messages"] = msgs
    elif kind == "bad_timestamp":
        bad["timestamp"] = "yesterday"
    else:
        raise ValueError(f"unknown malformed kind {kind!r}: one of {MALFORMED_KINDS}")
    return _encode(bad)


def generate_records(n: int, seed: int, tenants: int = 3, days: int = 7,
                     start: str = "2026-11-01") -> Iterator[str]:
    """The ``n`` JSONL lines of ``iter_generated`` (strings, no newline), in memory."""
    for g in iter_generated(n, seed, tenants, days, start):
        yield g.line


# ---- files -------------------------------------------------------------------------------------

def _replace_atomically(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DayFiles:
    """Per-tenant files of one day, written to ``.<name>.tmp`` and renamed when the day is done."""

    def __init__(self, out_dir: Path, day: str):
        self.folder = out_dir / f"date={day}"
        self.day = day
        self.handles: dict[str, Any] = {}

    def write(self, tenant_id: str, line: str) -> None:
        fh = self.handles.get(tenant_id)
        if fh is None:
            fh = self._open(tenant_id)
        fh.write(line + "\n")

    def _open(self, tenant_id: str):
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / f".generated-{tenant_id}-{self.day}.jsonl.tmp", "w",
                  encoding="utf-8", newline="\n", buffering=1 << 20)
        self.handles[tenant_id] = fh
        return fh

    def finish(self) -> list[Path]:
        done = []
        for tenant_id in sorted(self.handles):
            fh = self.handles[tenant_id]
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            final = self.folder / f"generated-{tenant_id}-{self.day}.jsonl"
            _replace_atomically(self.folder / f".{final.name}.tmp", final)
            done.append(final)
        self.handles = {}
        return done

    def abort(self) -> None:
        for tenant_id, fh in self.handles.items():
            fh.close()
            (self.folder / f".generated-{tenant_id}-{self.day}.jsonl.tmp").unlink(missing_ok=True)
        self.handles = {}


def generate(out_dir: Path | str, n_interactions: int, seed: int, tenants: int = 3,
             days: int = 7, start: str = "2026-11-01") -> dict[str, Any]:
    """Write ``n_interactions`` lines of demo logs under ``out_dir`` (landing layout) and
    ``out_dir/truth.jsonl``; return a summary (counts per kind, mistake and day; files; speed).

    Files are named ``date=<day>/generated-<tenant>-<day>.jsonl`` and written atomically (a
    ``.tmp`` file renamed into place), so running it again with the same arguments rewrites the
    same bytes under the same names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files: list[Path] = []
    # one counter keyed by (day, tenant, kind, mistake): a single dict update per line
    counts: dict[tuple[str, str, str, str | None], int] = {}
    truth_tmp = out / ".truth.jsonl.tmp"
    current: _DayFiles | None = None
    current_day = None
    try:
        with open(truth_tmp, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as truth:
            write_truth = truth.write
            for day, tenant_id, line, iid, mistake, kind, intent, answer in iter_generated(
                    n_interactions, seed, tenants, days, start):
                if day != current_day:
                    if current is not None:
                        files.extend(current.finish())
                    current, current_day = _DayFiles(out, day), day
                current.write(tenant_id, line)
                key = (day, tenant_id, kind, mistake)
                counts[key] = counts.get(key, 0) + 1
                if kind == "ok":
                    # == json.dumps({"interaction_id", "mistake", "intent", "answer"}) (ids are
                    # hex/dashes, intents plain words)
                    write_truth(f'{{"interaction_id": "{iid}", '
                                f'"mistake": {_MISTAKE_JSON[mistake]}, "intent": "{intent}", '
                                f'"answer": {_dumps(answer)}}}\n')
            if current is not None:
                files.extend(current.finish())
            truth.flush()
            os.fsync(truth.fileno())
    except BaseException:
        if current is not None:
            current.abort()
        truth_tmp.unlink(missing_ok=True)
        raise
    truth_path = out / "truth.jsonl"
    _replace_atomically(truth_tmp, truth_path)
    elapsed = time.perf_counter() - t0
    kinds: dict[str, int] = {}
    mistakes: dict[str, int] = {"none": 0, **{m: 0 for m in MISTAKES}}
    per_day: dict[str, int] = {}
    tenants_seen: set[str] = set()
    for (day, tenant_id, kind, mistake), c in counts.items():
        kinds[kind] = kinds.get(kind, 0) + c
        per_day[day] = per_day.get(day, 0) + c
        tenants_seen.add(tenant_id)
        if kind == "ok":
            mistakes[mistake or "none"] += c
    well_formed = kinds.get("ok", 0)
    return {
        "out_dir": str(out),
        "records": n_interactions,
        "well_formed": well_formed,
        "duplicates": kinds.get("duplicate", 0),
        "malformed": {k: kinds.get(k, 0) for k in MALFORMED_KINDS},
        "mistakes": mistakes,
        "mistake_rate": round(sum(v for k, v in mistakes.items() if k != "none")
                              / max(1, well_formed), 4),
        "tenants": sorted(tenants_seen),
        "days": dict(sorted(per_day.items())),
        "files": [str(f) for f in files],
        "truth_file": str(truth_path),
        "seed": seed,
        "seconds": round(elapsed, 3),
        "records_per_s": round(n_interactions / elapsed) if elapsed > 0 else None,
    }


__all__ = [
    "DUPLICATE_RATE", "MALFORMED_KINDS", "MALFORMED_RATE", "MISTAKES", "MISTAKE_RATES", "TENANTS",
    "GeneratedLine", "generate", "generate_records", "iter_generated", "luhn_check_digit",
    "make_card", "make_iban",
]
