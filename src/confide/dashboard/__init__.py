"""The live dashboard: a running federation in a browser (``--dashboard PORT``) and in the terminal
(``confide status``).

state.py records round events and updates; watch.py makes each update's account (read on its way to the loop by
server/observed.py) the note shown; view.py and ledgers.py make a snapshot (snapshot.py, the JSON's models); app.py
is the web application, serving.py its server thread, files.py the token and address files; live.py ties them
(Dashboard, launch); follow.py is the interface the simulator and the deployment see. Nothing here is imported
unless a dashboard is asked for.
"""
