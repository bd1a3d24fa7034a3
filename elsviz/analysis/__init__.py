"""What runs mean: provenance summaries, claims computed from a run's numbers, agreement with a
network (compare), finger counts and their explanation, the lesson's numbers."""
