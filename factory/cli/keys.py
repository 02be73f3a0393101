"""`breakwater keys ...`: offline keys and TUF roots."""


def register(sub, common):
    pass
