"""Challenge-response liveness: head-pose estimates from the five landmarks, the challenge's
rules, and their calibration. Torch-free: it runs on detections the pipeline already made."""
