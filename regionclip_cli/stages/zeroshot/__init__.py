"""Zero-shot region recognition and detection with any CLIP and any vocabulary."""
