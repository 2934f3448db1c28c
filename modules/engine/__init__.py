"""Pure generation: no gradio, no HTTP. Everything here takes typed inputs and returns typed results."""
