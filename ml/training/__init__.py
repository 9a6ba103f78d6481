"""Training: the offline base model, LoRA (+ DPO) fine-tuning, provider fine-tunes.

``ml.training.chat`` (examples as token ids, assistant-only labels, device), ``base_model``
(a small causal LM built offline from the logs), ``lora`` (LoRA fine-tuning with transformers +
peft; DPO with trl), ``providers`` (OpenAI and Gemini fine-tuning jobs). No Dagster here.
"""
