"""Three-branch family (Malík et al., three-branch-glas): foreground, boundary and centroid maps."""
