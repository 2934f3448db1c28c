"""The generated "shapes" world the default model is trained on, and a scorer that reads its images back."""
