"""Reading inputs: finding image files and opening them safely (``files``), and anything
image-like to RGB (``images``)."""
