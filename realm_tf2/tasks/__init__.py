"""Model Garden Tasks for the three modes: ICT, REALM pre-training, ORQA fine-tuning."""
