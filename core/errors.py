"""The one exception type for errors a user can fix.

The CLI prints it and exits 2; a page shows it with st.error. Anything else is a bug.
The message must name the file, line, field or key that is wrong.
"""


class UserError(Exception):
    pass
