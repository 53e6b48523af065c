"""Training: the loop (trainer), its optimizer and schedule, mixed precision, DDP/FSDP
(distributed), the --dry-run planner, the metrics log, and the finetune command flow."""
