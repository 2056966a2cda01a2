"""Prompt graphs: validation with ComfyUI's rules, planning and execution."""
