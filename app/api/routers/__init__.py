"""One router per feature; each translates HTTP to a service call and back."""
