"""Routing shared by the simulator and the live gateway: the policies (filter -> score
-> pick) that choose a pool for each request. ``sim`` and ``route`` both build on this
package and on ``plan``; neither imports the other."""
