"""Reading inputs and writing files safely: finding image files and opening them
safely (``files``), anything image-like to RGB (``images``), and files replaced whole
(``atomic``)."""
