"""The app's logic without Streamlit: run specs and their cache, time estimates, the background
worker, the finger page's view of a study (elsviz/ui draws them)."""
