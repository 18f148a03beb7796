"""Evaluation harness (`diffv2s evaluate`): synthesize a corpus split with the model, its ceilings and its
ablations, and score every utterance offline (grammar ASR + Whisper WER, STOI, ESTOI, PESQ-wb, MCD, SECS,
DNSMOS). Entry points: `harness.evaluate`, `harness.evaluate_videos`, `cli.evaluate_main`."""
