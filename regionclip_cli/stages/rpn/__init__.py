"""Training a class-agnostic RPN on your boxes (`regionclip rpn`), and its recall."""
