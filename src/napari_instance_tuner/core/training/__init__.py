"""Training: one train loop as a progress generator (resumable, EMA, amp), annotated data folders,
augmentation, training jobs, and fine-tuning from a user's corrections (checked regions).
Headless; torch is imported lazily.
"""
