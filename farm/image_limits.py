"""The largest image the farm decodes, for the web's previews and masks and the workers' LoadImage."""

MAX_SIDE = 8192
# 64 MP: 256 MB as RGBA bytes (768 MB as a worker's float tensor). A PNG of 12 KB can declare
# 10,000 x 10,000 pixels; Pillow itself only refuses past 179 million.
MAX_PIXELS = MAX_SIDE * MAX_SIDE
