"""Which flavour of signed metadata a client is served: TUF 1.0, or the older one libaktualizr
(aktualizr-lite) verifies. Decided per request from the User-Agent: the flavour is a property of
the client software, not of the device, and both flavours carry the same keys and versions, so a
client that switches never sees a version go down."""

TUF = "tuf"
AKTUALIZR = "aktualizr"
FLAVOURS = (TUF, AKTUALIZR)


def flavour_of(user_agent):
    """AKTUALIZR for a User-Agent starting with "Aktualizr/" (any case), TUF for every other."""
    if isinstance(user_agent, bytes):
        user_agent = user_agent.decode("latin-1")
    if isinstance(user_agent, str) and user_agent[:10].lower() == "aktualizr/":
        return AKTUALIZR
    return TUF
