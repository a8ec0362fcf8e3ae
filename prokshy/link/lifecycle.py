# -*- test-case-name: tests.unit.test_link_machine -*-
"""
The lifecycle of a link's sessions, as two Automat machines: one for each
role.  The host opens (it says hello until a guest answers); the guest
answers.  A (state, input) pair that cannot do anything is declared too,
as a transition to the same state with no output (a stale timer, a hello
or frame that means nothing in that state), so that every pair is
written down: L{prokshy._machines.undeclared} is empty for both machines.

Each state's timers (L{prokshy.link.keepalive}) are started by the outputs
of the transitions that enter it and stopped by those that leave it:

    state   timers
    ------  --------------------------------------------------------------
    HELLO   hello (host)
    UP      ping, dead watch; re-hello (host) or quiet watch (guest); and
            the session's retransmission timer (L{prokshy.link.retransmit})
    quiet   dead watch (guest: UP, but sending nothing of its own)

Outputs that call the link's listener come last in each transition, so a
listener that stops the link from its callback finds it in its new state.

The host (L{HostLifecycle})::

    hello    answerRepeated   -> hello
    hello    answered         -> up       _stopHelloTimer, _openSession, _startUpTimers, _notifyUp
    hello    endSession       -> hello
    hello    goodbyeReceived  -> hello
    hello    heard            -> hello
    hello    helloTimer       -> hello    _sendHello
    hello    incompatible     -> hello    _noteIncompatible
    hello    peerSilent       -> hello
    hello    pingTimer        -> hello
    hello    refused          -> stopped  _stopHelloTimer, _noteRefusal, _notifyRefused
    hello    rehelloTimer     -> hello
    hello    start            -> hello
    hello    stop             -> stopped  _stopHelloTimer
    idle     answerRepeated   -> idle
    idle     answered         -> idle
    idle     endSession       -> idle
    idle     goodbyeReceived  -> idle
    idle     heard            -> idle
    idle     helloTimer       -> idle
    idle     incompatible     -> idle
    idle     peerSilent       -> idle
    idle     pingTimer        -> idle
    idle     refused          -> idle
    idle     rehelloTimer     -> idle
    idle     start            -> hello    _makeNonce, _sendHello, _startHelloTimer
    idle     stop             -> stopped
    stopped  answerRepeated   -> stopped
    stopped  answered         -> stopped
    stopped  endSession       -> stopped
    stopped  goodbyeReceived  -> stopped
    stopped  heard            -> stopped
    stopped  helloTimer       -> stopped
    stopped  incompatible     -> stopped
    stopped  peerSilent       -> stopped
    stopped  pingTimer        -> stopped
    stopped  refused          -> stopped
    stopped  rehelloTimer     -> stopped
    stopped  start            -> stopped
    stopped  stop             -> stopped
    up       answerRepeated   -> up
    up       answered         -> up       _stopUpTimers, _closeSession, _notifyGuestRestarted, _openSession, _startUpTimers, _notifyUp
    up       endSession       -> hello    _stopUpTimers, _closeSession, _makeNonce, _sendHello, _startHelloTimer, _notifyDown
    up       goodbyeReceived  -> hello    _stopUpTimers, _closeSession, _makeNonce, _sendHello, _startHelloTimer, _notifyDown
    up       heard            -> up
    up       helloTimer       -> up
    up       incompatible     -> hello    _stopUpTimers, _closeSession, _noteIncompatible, _makeNonce, _sendHello, _startHelloTimer, _notifyGuestRestarted
    up       peerSilent       -> hello    _stopUpTimers, _closeSession, _makeNonce, _sendHello, _startHelloTimer, _notifyDown
    up       pingTimer        -> up       _sendPing
    up       refused          -> stopped  _stopUpTimers, _closeSession, _noteRefusal, _notifyDownRefused, _notifyRefused
    up       rehelloTimer     -> up       _sendHello
    up       start            -> up
    up       stop             -> stopped  _stopUpTimers, _closeSession, _notifyDown

The guest (L{GuestLifecycle}); C{quiet} is reported as C{UP}::

    idle     endSession         -> idle
    idle     goodbyeReceived    -> idle
    idle     heard              -> idle
    idle     hostHello          -> up       _makeNonce, _sendAnswer, _openSession, _startUpTimers, _notifyUp
    idle     hostHelloRefused   -> idle     _sendRefusal
    idle     hostHelloRepeated  -> idle
    idle     peerSilent         -> idle
    idle     pingTimer          -> idle
    idle     quietTimer         -> idle
    idle     start              -> idle
    idle     stop               -> stopped
    quiet    endSession         -> idle     _stopUpTimers, _closeSession, _notifyDown
    quiet    goodbyeReceived    -> idle     _stopUpTimers, _closeSession, _notifyDown
    quiet    heard              -> up       _resume
    quiet    hostHello          -> up       _stopUpTimers, _closeSession, _notifyHostRestarted, _makeNonce, _sendAnswer, _openSession, _startUpTimers, _notifyUp
    quiet    hostHelloRefused   -> quiet    _sendRefusal
    quiet    hostHelloRepeated  -> up       _resume, _sendAnswer, _pump
    quiet    peerSilent         -> idle     _stopUpTimers, _closeSession, _notifyDown
    quiet    pingTimer          -> quiet
    quiet    quietTimer         -> quiet
    quiet    start              -> quiet
    quiet    stop               -> stopped  _stopUpTimers, _closeSession, _notifyDown
    stopped  endSession         -> stopped
    stopped  goodbyeReceived    -> stopped
    stopped  heard              -> stopped
    stopped  hostHello          -> stopped
    stopped  hostHelloRefused   -> stopped
    stopped  hostHelloRepeated  -> stopped
    stopped  peerSilent         -> stopped
    stopped  pingTimer          -> stopped
    stopped  quietTimer         -> stopped
    stopped  start              -> stopped
    stopped  stop               -> stopped
    up       endSession         -> idle     _stopUpTimers, _closeSession, _notifyDown
    up       goodbyeReceived    -> idle     _stopUpTimers, _closeSession, _notifyDown
    up       heard              -> up
    up       hostHello          -> up       _stopUpTimers, _closeSession, _notifyHostRestarted, _makeNonce, _sendAnswer, _openSession, _startUpTimers, _notifyUp
    up       hostHelloRefused   -> up       _sendRefusal
    up       hostHelloRepeated  -> up       _sendAnswer, _pump
    up       peerSilent         -> idle     _stopUpTimers, _closeSession, _notifyDown
    up       pingTimer          -> up       _sendPing
    up       quietTimer         -> quiet    _goQuiet
    up       start              -> up
    up       stop               -> stopped  _stopUpTimers, _closeSession, _notifyDown

Hellos are told apart before they reach a machine (L{prokshy.link.session}):
a guest answer to a nonce other than the host's current one is stale and
ignored; one naming the session's own guest nonce is C{answerRepeated}; a
refusal, an incompatible answer and a good one are C{refused},
C{incompatible} and C{answered}.  On the guest, a host hello with the
session's host nonce is C{hostHelloRepeated}; any other is checked
(version, limits, the L{prokshy.link.interfaces.ILinkAuthorizer}) and is
C{hostHelloRefused} or C{hostHello}.
"""

from automat import MethodicalMachine
from twisted.logger import Logger
from zope.interface import Interface

from prokshy import _machines
from prokshy.link.keepalive import Repeater, SilenceTimer


class ISessionCore(Interface):
    """
    What the lifecycle machines do to their link (L{prokshy.link.session.Link}).
    """

    def makeNonce():
        """
        Choose a new nonce of ours.
        """

    def sendHello():
        """
        Host: say hello with our current nonce.
        """

    def sendAnswer(hello):
        """
        Guest: answer a host hello (C{peer} set to its nonce).
        """

    def sendRefusal(hello, reason):
        """
        Guest: answer a host hello with an error.
        """

    def sendPing():
        """
        Send a keepalive PING.
        """

    def openSession(hello, version):
        """
        Start a session with the peer whose hello (or answer) this is.
        """

    def closeSession():
        """
        The session is over: stop its retransmission timer.
        """

    def pauseTransfer():
        """
        Guest going quiet: send nothing of our own (no new frames, no
        resends, no checkpoints).
        """

    def resumeTransfer():
        """
        The peer was heard again: go on where we were.
        """

    def pump():
        """
        Send whatever may be sent now.
        """

    def noteRefusal(reason):
        """
        Host: the guest refused us.
        """

    def noteIncompatible(problem):
        """
        Host: a guest answered that we cannot start a session with.
        """

    def noteQuiet():
        """
        Guest: we went quiet.
        """

    def lastHeardAt():
        """
        @return: when the peer was last heard (clock seconds).
        """

    def quietAfter():
        """
        @return: seconds of silence after which a guest goes quiet, or None.
        """

    def notifyUp():
        """
        Tell the listener the session is up.
        """

    def notifyDown(reason):
        """
        Tell the listener the session ended, with C{reason} (text).
        """

    def notifyRefused(reason):
        """
        Tell the listener the guest refused us.
        """


class _Lifecycle:
    """
    What both machines share: the collaborator, and the timers of UP.

    @ivar current: the name of the state the machine is in (kept by the
        machine's tracer, so it cannot drift from the machine).
    """

    log = Logger()

    def __init__(self, core, clock, config):
        self.current = "idle"
        self._setTrace(self._traced)
        self._core = core
        self._clock = clock
        self._config = config
        self._ping = Repeater(clock, config.pingInterval, self._pingTick)
        self._dead = SilenceTimer(clock, config.deadAfter, core.lastHeardAt, self._deadTick)

    def _traced(self, old, input, new):
        self.current = new
        return None

    def runningTimers(self):
        """
        The names of this machine's timers that are running now.
        """
        return {name for name, timer in self._timers().items() if timer.running}

    def _timers(self):
        return {"ping": self._ping, "dead": self._dead}

    def _pingTick(self):
        self.pingTimer()

    def _deadTick(self, silent):
        self.peerSilent("peer silent for %.1f s" % (silent,))


@_machines.fast
class HostLifecycle(_Lifecycle):
    """
    The host's sessions: say hello until answered, keep the session, start
    over whenever it ends, until stopped.
    """

    _machine = MethodicalMachine()
    _setTrace = _machine._setTrace

    def __init__(self, core, clock, config):
        _Lifecycle.__init__(self, core, clock, config)
        self._hello = Repeater(clock, config.helloInterval, self._helloTick)
        self._rehello = SilenceTimer(
            clock, config.rehelloAfter, core.lastHeardAt, self._rehelloTick,
            every=config.helloInterval,
        )

    def _timers(self):
        return dict(_Lifecycle._timers(self), hello=self._hello, rehello=self._rehello)

    def _helloTick(self):
        self.helloTimer()

    def _rehelloTick(self, silent):
        self.rehelloTimer()

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "Not started."

    @_machine.state()
    def hello(self):
        "Saying hello (a new nonce) every helloInterval until a guest answers."

    @_machine.state()
    def up(self):
        "A session."

    @_machine.state()
    def stopped(self):
        "Stopped for good."

    # -- inputs -----------------------------------------------------------

    @_machine.input()
    def start(self):
        "Begin."

    @_machine.input()
    def stop(self, reason):
        "Stop for good."

    @_machine.input()
    def endSession(self, reason):
        "End the session without a word to the guest (it is gone)."

    @_machine.input()
    def helloTimer(self):
        "The hello timer expired."

    @_machine.input()
    def answered(self, hello, version):
        "A compatible guest answered our current nonce, with a new nonce."

    @_machine.input()
    def answerRepeated(self):
        "The session's guest answered again (a re-hello)."

    @_machine.input()
    def refused(self, reason):
        "A guest answered our nonce with an error."

    @_machine.input()
    def incompatible(self, problem):
        "A guest answered our nonce with no common version, or too small limits."

    @_machine.input()
    def goodbyeReceived(self, reason):
        "The guest said GOODBYE."

    @_machine.input()
    def peerSilent(self, reason):
        "The dead watch expired."

    @_machine.input()
    def rehelloTimer(self):
        "The guest has been silent for rehelloAfter (and then every helloInterval)."

    @_machine.input()
    def pingTimer(self):
        "The ping timer expired."

    @_machine.input()
    def heard(self):
        "The guest said something valid."


    # -- outputs ----------------------------------------------------------

    @_machine.output()
    def _makeNonce(self):
        self._core.makeNonce()

    @_machine.output()
    def _sendHello(self):
        self._core.sendHello()

    @_machine.output()
    def _startHelloTimer(self):
        self._hello.start()

    @_machine.output()
    def _stopHelloTimer(self):
        self._hello.stop()

    @_machine.output()
    def _openSession(self, hello, version):
        self._core.openSession(hello, version)

    @_machine.output()
    def _closeSession(self):
        self._core.closeSession()

    @_machine.output()
    def _startUpTimers(self):
        self._ping.start()
        self._dead.start()
        self._rehello.start()

    @_machine.output()
    def _stopUpTimers(self):
        self._ping.stop()
        self._dead.stop()
        self._rehello.stop()

    @_machine.output()
    def _sendPing(self):
        self._core.sendPing()

    @_machine.output()
    def _noteRefusal(self, reason):
        self._core.noteRefusal(reason)

    @_machine.output()
    def _noteIncompatible(self, problem):
        self._core.noteIncompatible(problem)

    @_machine.output()
    def _notifyUp(self):
        self._core.notifyUp()

    @_machine.output()
    def _notifyDown(self, reason):
        self._core.notifyDown(reason)

    @_machine.output()
    def _notifyDownRefused(self, reason):
        self._core.notifyDown("refused: " + reason)

    @_machine.output()
    def _notifyGuestRestarted(self):
        self._core.notifyDown("guest restarted")

    @_machine.output()
    def _notifyRefused(self, reason):
        self._core.notifyRefused(reason)





    # -- transitions ------------------------------------------------------

    _restart = [_makeNonce, _sendHello, _startHelloTimer]
    _leaveUp = [_stopUpTimers, _closeSession]

    idle.upon(start, enter=hello, outputs=_restart)
    idle.upon(stop, enter=stopped, outputs=[])
    idle.upon(endSession, enter=idle, outputs=[])
    idle.upon(helloTimer, enter=idle, outputs=[])
    idle.upon(answered, enter=idle, outputs=[])
    idle.upon(answerRepeated, enter=idle, outputs=[])
    idle.upon(refused, enter=idle, outputs=[])
    idle.upon(incompatible, enter=idle, outputs=[])
    idle.upon(goodbyeReceived, enter=idle, outputs=[])
    idle.upon(peerSilent, enter=idle, outputs=[])
    idle.upon(rehelloTimer, enter=idle, outputs=[])
    idle.upon(pingTimer, enter=idle, outputs=[])
    idle.upon(heard, enter=idle, outputs=[])

    hello.upon(start, enter=hello, outputs=[])
    hello.upon(stop, enter=stopped, outputs=[_stopHelloTimer])
    hello.upon(endSession, enter=hello, outputs=[])
    hello.upon(helloTimer, enter=hello, outputs=[_sendHello])
    hello.upon(answered, enter=up, outputs=[_stopHelloTimer, _openSession, _startUpTimers, _notifyUp])
    hello.upon(answerRepeated, enter=hello, outputs=[])
    hello.upon(refused, enter=stopped, outputs=[_stopHelloTimer, _noteRefusal, _notifyRefused])
    hello.upon(incompatible, enter=hello, outputs=[_noteIncompatible])
    hello.upon(goodbyeReceived, enter=hello, outputs=[])
    hello.upon(peerSilent, enter=hello, outputs=[])
    hello.upon(rehelloTimer, enter=hello, outputs=[])
    hello.upon(pingTimer, enter=hello, outputs=[])
    hello.upon(heard, enter=hello, outputs=[])

    up.upon(start, enter=up, outputs=[])
    up.upon(stop, enter=stopped, outputs=_leaveUp + [_notifyDown])
    up.upon(endSession, enter=hello, outputs=_leaveUp + _restart + [_notifyDown])
    up.upon(helloTimer, enter=up, outputs=[])
    up.upon(
        answered,
        enter=up,
        outputs=_leaveUp + [_notifyGuestRestarted, _openSession, _startUpTimers, _notifyUp],
    )
    up.upon(answerRepeated, enter=up, outputs=[])
    up.upon(refused, enter=stopped, outputs=_leaveUp + [_noteRefusal, _notifyDownRefused, _notifyRefused])
    up.upon(
        incompatible,
        enter=hello,
        outputs=_leaveUp + [_noteIncompatible] + _restart + [_notifyGuestRestarted],
    )
    up.upon(goodbyeReceived, enter=hello, outputs=_leaveUp + _restart + [_notifyDown])
    up.upon(peerSilent, enter=hello, outputs=_leaveUp + _restart + [_notifyDown])
    up.upon(rehelloTimer, enter=up, outputs=[_sendHello])
    up.upon(pingTimer, enter=up, outputs=[_sendPing])
    up.upon(heard, enter=up, outputs=[])

    stopped.upon(start, enter=stopped, outputs=[])
    stopped.upon(stop, enter=stopped, outputs=[])
    stopped.upon(endSession, enter=stopped, outputs=[])
    stopped.upon(helloTimer, enter=stopped, outputs=[])
    stopped.upon(answered, enter=stopped, outputs=[])
    stopped.upon(answerRepeated, enter=stopped, outputs=[])
    stopped.upon(refused, enter=stopped, outputs=[])
    stopped.upon(incompatible, enter=stopped, outputs=[])
    stopped.upon(goodbyeReceived, enter=stopped, outputs=[])
    stopped.upon(peerSilent, enter=stopped, outputs=[])
    stopped.upon(rehelloTimer, enter=stopped, outputs=[])
    stopped.upon(pingTimer, enter=stopped, outputs=[])
    stopped.upon(heard, enter=stopped, outputs=[])

    del _restart, _leaveUp


@_machines.fast
class GuestLifecycle(_Lifecycle):
    """
    The guest's sessions: answer a host, keep the session, go quiet when
    the host falls silent, wait for the next host when it ends.
    """

    _machine = MethodicalMachine()
    _setTrace = _machine._setTrace

    def __init__(self, core, clock, config):
        _Lifecycle.__init__(self, core, clock, config)
        self._quiet = SilenceTimer(clock, 0.0, core.lastHeardAt, self._quietTick)

    def _timers(self):
        return dict(_Lifecycle._timers(self), quiet=self._quiet)

    def _quietTick(self, silent):
        self.quietTimer()

    # -- states -----------------------------------------------------------

    @_machine.state(initial=True)
    def idle(self):
        "No session: waiting for a host hello."

    @_machine.state()
    def up(self):
        "A session."

    @_machine.state()
    def quiet(self):
        "A session whose host has been silent: we send nothing of our own."

    @_machine.state()
    def stopped(self):
        "Stopped for good."

    # -- inputs -----------------------------------------------------------

    @_machine.input()
    def start(self):
        "Begin (wait for a hello)."

    @_machine.input()
    def stop(self, reason):
        "Stop for good."

    @_machine.input()
    def endSession(self, reason):
        "End the session without a word (a new client took the device)."

    @_machine.input()
    def hostHello(self, hello, version):
        "An acceptable host hello with a nonce other than the session's."

    @_machine.input()
    def hostHelloRepeated(self, hello):
        "The session's host said hello again (our answer was lost, or a re-hello)."

    @_machine.input()
    def hostHelloRefused(self, hello, reason):
        "A host hello we refuse (version, limits, or the authorizer)."

    @_machine.input()
    def goodbyeReceived(self, reason):
        "The host said GOODBYE."

    @_machine.input()
    def peerSilent(self, reason):
        "The dead watch expired."

    @_machine.input()
    def quietTimer(self):
        "The host has been silent for quietPings of its ping intervals."

    @_machine.input()
    def pingTimer(self):
        "The ping timer expired."

    @_machine.input()
    def heard(self):
        "The host said something valid."


    # -- outputs ----------------------------------------------------------

    @_machine.output()
    def _makeNonce(self):
        self._core.makeNonce()

    @_machine.output()
    def _sendAnswer(self, hello):
        self._core.sendAnswer(hello)

    @_machine.output()
    def _sendRefusal(self, hello, reason):
        self._core.sendRefusal(hello, reason)

    @_machine.output()
    def _openSession(self, hello, version):
        self._core.openSession(hello, version)

    @_machine.output()
    def _closeSession(self):
        self._core.closeSession()

    @_machine.output()
    def _startUpTimers(self):
        self._dead.start()
        self._startChatter()

    def _startChatter(self):
        self._ping.start()
        after = self._core.quietAfter()
        if after is not None:
            self._quiet.after = after
            self._quiet.start()

    @_machine.output()
    def _stopUpTimers(self):
        self._dead.stop()
        self._ping.stop()
        self._quiet.stop()

    @_machine.output()
    def _goQuiet(self):
        self._ping.stop()
        self._quiet.stop()
        self._core.pauseTransfer()
        self._core.noteQuiet()

    @_machine.output()
    def _resume(self):
        self._startChatter()
        self._core.resumeTransfer()

    @_machine.output()
    def _pump(self):
        self._core.pump()

    @_machine.output()
    def _sendPing(self):
        self._core.sendPing()

    @_machine.output()
    def _notifyUp(self):
        self._core.notifyUp()

    @_machine.output()
    def _notifyDown(self, reason):
        self._core.notifyDown(reason)

    @_machine.output()
    def _notifyHostRestarted(self):
        self._core.notifyDown("host started a new session")





    # -- transitions ------------------------------------------------------

    _answer = [_makeNonce, _sendAnswer, _openSession, _startUpTimers, _notifyUp]
    _leave = [_stopUpTimers, _closeSession]

    idle.upon(start, enter=idle, outputs=[])
    idle.upon(stop, enter=stopped, outputs=[])
    idle.upon(endSession, enter=idle, outputs=[])
    idle.upon(hostHello, enter=up, outputs=_answer)
    idle.upon(hostHelloRepeated, enter=idle, outputs=[])
    idle.upon(hostHelloRefused, enter=idle, outputs=[_sendRefusal])
    idle.upon(goodbyeReceived, enter=idle, outputs=[])
    idle.upon(peerSilent, enter=idle, outputs=[])
    idle.upon(quietTimer, enter=idle, outputs=[])
    idle.upon(pingTimer, enter=idle, outputs=[])
    idle.upon(heard, enter=idle, outputs=[])

    up.upon(start, enter=up, outputs=[])
    up.upon(stop, enter=stopped, outputs=_leave + [_notifyDown])
    up.upon(endSession, enter=idle, outputs=_leave + [_notifyDown])
    up.upon(hostHello, enter=up, outputs=_leave + [_notifyHostRestarted] + _answer)
    up.upon(hostHelloRepeated, enter=up, outputs=[_sendAnswer, _pump])
    up.upon(hostHelloRefused, enter=up, outputs=[_sendRefusal])
    up.upon(goodbyeReceived, enter=idle, outputs=_leave + [_notifyDown])
    up.upon(peerSilent, enter=idle, outputs=_leave + [_notifyDown])
    up.upon(quietTimer, enter=quiet, outputs=[_goQuiet])
    up.upon(pingTimer, enter=up, outputs=[_sendPing])
    up.upon(heard, enter=up, outputs=[])

    quiet.upon(start, enter=quiet, outputs=[])
    quiet.upon(stop, enter=stopped, outputs=_leave + [_notifyDown])
    quiet.upon(endSession, enter=idle, outputs=_leave + [_notifyDown])
    quiet.upon(hostHello, enter=up, outputs=_leave + [_notifyHostRestarted] + _answer)
    quiet.upon(hostHelloRepeated, enter=up, outputs=[_resume, _sendAnswer, _pump])
    quiet.upon(hostHelloRefused, enter=quiet, outputs=[_sendRefusal])
    quiet.upon(goodbyeReceived, enter=idle, outputs=_leave + [_notifyDown])
    quiet.upon(peerSilent, enter=idle, outputs=_leave + [_notifyDown])
    quiet.upon(quietTimer, enter=quiet, outputs=[])
    quiet.upon(pingTimer, enter=quiet, outputs=[])
    quiet.upon(heard, enter=up, outputs=[_resume])

    stopped.upon(start, enter=stopped, outputs=[])
    stopped.upon(stop, enter=stopped, outputs=[])
    stopped.upon(endSession, enter=stopped, outputs=[])
    stopped.upon(hostHello, enter=stopped, outputs=[])
    stopped.upon(hostHelloRepeated, enter=stopped, outputs=[])
    stopped.upon(hostHelloRefused, enter=stopped, outputs=[])
    stopped.upon(goodbyeReceived, enter=stopped, outputs=[])
    stopped.upon(peerSilent, enter=stopped, outputs=[])
    stopped.upon(quietTimer, enter=stopped, outputs=[])
    stopped.upon(pingTimer, enter=stopped, outputs=[])
    stopped.upon(heard, enter=stopped, outputs=[])

    del _answer, _leave


def lifecycleFor(role, core, clock, config):
    """
    The lifecycle machine of a link with C{role}.
    """
    cls = HostLifecycle if role == "host" else GuestLifecycle
    return cls(core, clock, config)
