"""What a person sees: HTML, plots, saliency maps, attention maps, the interactive view and the report."""
