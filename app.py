"""elsviz: the Streamlit app (placeholder until the app issue lands)."""
import streamlit as st

st.set_page_config(page_title="elsviz", layout="wide")
st.title("elsviz")
st.write("The Equivariant Local Score machine, made watchable. The app is being built.")
