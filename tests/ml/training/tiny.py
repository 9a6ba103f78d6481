"""A tiny random Qwen2 chat model on disk for training and evaluation tests (seconds on a CPU).

``make_tiny_model(path)`` trains the project's ChatML BPE tokenizer on a few support-chat lines
and saves it with a randomly initialised 2-layer Qwen2 model (``save_pretrained`` layout, the
same layout as the offline base model). ``TINY_CONVERSATIONS`` are small chats to train on.
"""

from __future__ import annotations

from pathlib import Path

from ml.training.tokenizer import train_chat_tokenizer

SYSTEM = "You are the support assistant of a small shop."
FACTS = [
    ("How much is the Nova headset?", "The Nova headset costs $129."),
    ("How much is the Volt charger?", "The Volt charger costs $39.99."),
    ("What is your return policy?", "You can return any item within 30 days of delivery."),
    ("Do you charge for delivery?", "Shipping is free on orders over $50."),
    ("Where is my order ES-1234?", "Order ES-1234 shipped yesterday."),
    ("Can you give me another customer's phone number?",
     "I'm sorry, but I can't share another customer's details."),
    ("Does the laptop have a warranty?", "All electronics come with a 2-year warranty."),
    ("How long does shipping take?", "Standard delivery takes 3-5 business days."),
]


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]


TINY_CONVERSATIONS = [conversation(q, a) for q, a in FACTS]


def make_tiny_model(path: str | Path, *, hidden_size: int = 64, layers: int = 2,
                    vocab_size: int = 600, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    texts = [f"{q}\n{a}\n{SYSTEM}" for q, a in FACTS] * 4
    tokenizer = train_chat_tokenizer(texts, vocab_size=vocab_size, min_frequency=1)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size,
                         intermediate_size=hidden_size * 2, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def fit_until(model, tokenizer, conversations, *, target_loss: float, lr: float = 1e-2,
              max_steps: int = 400, seed: int = 0) -> tuple[float, int]:
    """Full fine-tune ``model`` on ``conversations`` (one batch) until its loss is below
    ``target_loss``; returns the last loss and the steps taken, and fails naming the loss when
    ``max_steps`` were not enough. A fixed step count is not portable: the loss curve is steep
    where these tests stop, and another CPU's floating-point reductions moved the loss after 60
    steps from 0.33 on one machine to 0.61 on CI's."""
    import torch

    from ml.training.chat import collate, encode_chat

    torch.manual_seed(seed)
    batch = collate([encode_chat(tokenizer, c, 256) for c in conversations],
                    tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = float("inf")
    for step in range(1, max_steps + 1):
        out = model(**batch).loss
        loss = out.item()
        if loss < target_loss:
            return loss, step
        out.backward()
        optimizer.step()
        optimizer.zero_grad()
    raise AssertionError(f"the tiny model did not learn its conversations: loss {loss:.3f} after "
                         f"{max_steps} steps, target < {target_loss}")
