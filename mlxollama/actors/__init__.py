"""Pykka actors: model, session, governor and store, and the runtime that starts them."""
