"""The face pipeline: decode, detect, align, embed, verify; ``FacePipeline`` runs them."""
