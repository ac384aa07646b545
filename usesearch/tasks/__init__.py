"""What the model is used for besides search: semantic and part segmentation with their
evaluations, dataset audits, and pictures of the results."""
