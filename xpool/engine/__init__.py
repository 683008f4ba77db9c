"""Everything that runs a model: devices and seeds (`setup`), embedding a split (`embed`), the
frozen-feature cache (`features`), tiny-CLIP pretraining (`pretrain`), evaluation (`evaluate`),
checkpoint selection (`selection`), the training loop (`train`), DDP (`distributed`) and run
records (`runs`). Import the modules themselves; this package re-exports nothing."""
