using System.Diagnostics;
using System.Net.Http;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Google.Protobuf;
using Grpc.Core;
using Rbs.JBazel.Terminal;
using Rbs.V1;

namespace Rbs.JBazel.Remote;

/// <summary>
/// One ExecuteCommand stream: sends the start frame, pumps stdin, writes the agent's stdout/stderr bytes
/// to jbazel's own, forwards Ctrl-C and window-size changes, and returns the remote tool's exit code. When the agent
/// runs the tool on a pseudo-terminal whose stdin is the laptop's terminal, that terminal is in raw input mode for
/// the command (<see cref="RawMode"/>).
/// </summary>
internal sealed class CommandSession(Allocation allocation, ChannelPool channels, StandardStreams streams, InterruptSignals interrupts)
{
    public const int StdinChunkSize = 64 * 1024;

    /// <summary>jbazel tells the agent what it has written every 1 MiB, so the agent can forget it (docs/reattach.md).</summary>
    internal const long AckInterval = 1024 * 1024;

    /// <summary>Calls a start gets in all while a proxy fails it before the agent answers (waits 200 ms, 400, 800, 1.6 s).</summary>
    internal const int MaxStartAttempts = 5;

    private static readonly TimeSpan s_interruptWriteTimeout = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan s_forceWriteTimeout = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan s_resizeWriteTimeout = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan s_confirmTimeout = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan s_firstRetryDelay = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan s_maxRetryDelay = TimeSpan.FromSeconds(1);

    private readonly StdinJournal _stdin = new();
    private long _stdoutWritten;
    private long _stderrWritten;
    private long _acked;
    private string? _attachToken;
    private TimeSpan _grace;
    private int _forced;
    private int _interruptSent;
    private bool _stdinStarted;

    /// <param name="resync">
    /// For a start that names the agent's tree (<c>expected_tree_digest</c>): syncs the workspace when the agent answers
    /// that it holds another tree, and returns the digest of the tree synced, which the start then names instead.
    /// </param>
    public async Task<int> RunAsync(StartCommand start, CancellationToken cancellationToken, Func<string, CancellationToken, Task<byte[]>>? resync = null)
    {
        if (interrupts.First.IsCancellationRequested)
        {
            // Ctrl-C between allocation and start: nothing runs remotely yet.
            return ExitCodes.Interrupted;
        }

        start.Reattachable = true;
        RawMode? rawMode = null;
        PosixSignalRegistration? onResize = null;
        try
        {
            var first = new ClientFrame { Start = start };
            long? lostAt = null;
            var attempt = 0;
            var startRetries = 0;
            var resynced = false;
            while (true)
            {
                var outcome = await RunCallAsync(first, lostAt, () =>
                {
                    // Once the command runs: the terminal in raw mode and window-size changes, for the whole session.
                    if (start.Terminal is { StderrIsTty: true } && onResize is null)
                    {
                        onResize = ForwardWindowSizeChanges(this);
                        if (start.Terminal.StdinIsTty)
                        {
                            // Keystrokes go to the agent's terminal as typed; its line discipline echoes and edits.
                            rawMode = RawMode.Enter(0);
                        }
                    }
                }, cancellationToken);
                if (outcome.ExitCode is { } code)
                {
                    return code;
                }

                if (outcome.TreeOutdated is { } outdated)
                {
                    // Nothing ran. The terminal is the laptop's again while the sync reports, then the same start goes out.
                    if (resync is null || resynced)
                    {
                        throw new RemoteFailure(ExitCodes.TransientRemoteError,
                            $"{allocation.Description} does not hold the workspace tree jbazel just synced to it ({outdated}): is another jbazel syncing a different tree of this workspace? Run the command again.");
                    }

                    resynced = true;
                    onResize?.Dispose();
                    onResize = null;
                    rawMode?.Dispose();
                    rawMode = null;
                    start.ExpectedTreeDigest = ByteString.CopyFrom(await resync(outdated, cancellationToken));
                    continue;
                }

                var error = outcome.Error;
                // A proxy failed the start before the agent answered (a replica stopping in a rolling restart): the same
                // start (same invocation id) again. An agent that did get the first one refuses the second
                // (AlreadyExists): the command never runs twice.
                if (_attachToken is null && first.FrameCase == ClientFrame.FrameOneofCase.Start && !outcome.ReceivedFrame
                    && error is not null && RemoteFailure.IsIntermediaryFailure(error) && ++startRetries < MaxStartAttempts)
                {
                    await Task.Delay(s_firstRetryDelay * (1 << startRetries), cancellationToken);
                    continue;
                }

                if (startRetries > 0 && error is { StatusCode: StatusCode.AlreadyExists })
                {
                    throw new RemoteFailure(ExitCodes.TransientRemoteError,
                        $"a proxy failed the call that started invocation {start.InvocationId} on {allocation.Description} after it arrived: " +
                        "the command runs there without this client, and stops within the agent's reattach grace time. Run the command again.");
                }

                if (_attachToken is null || _grace <= TimeSpan.Zero || (error is not null && !RemoteFailure.IsTransient(error)))
                {
                    if (lostAt is not null && error is { StatusCode: StatusCode.NotFound })
                    {
                        throw new RemoteFailure(ExitCodes.TransientRemoteError,
                            $"lost the connection to {allocation.Description} and could not reattach to invocation {start.InvocationId}: {RemoteFailure.Describe(error)}");
                    }

                    throw error is null ? Lost("the stream ended without an exit status", fromGateway: allocation.ThroughGateway) : Failure(error, outcome.ReceivedFrame);
                }

                lostAt ??= Stopwatch.GetTimestamp();
                var away = Stopwatch.GetElapsedTime(lostAt.Value);
                // Direct mode: nothing listening on the agent's own port any more means the agent (and the command
                // with it) is gone; waiting out the grace time would not bring it back.
                var agentGone = !allocation.ThroughGateway && error is not null && IsRefused(error);
                if (away >= _grace || agentGone)
                {
                    throw GaveUp(error, start.InvocationId, agentGone);
                }

                // Capped exponential backoff with jitter; a second Ctrl-C leaves at once, as it does while attached.
                var delay = TimeSpan.FromMilliseconds(Math.Min(s_maxRetryDelay.TotalMilliseconds, s_firstRetryDelay.TotalMilliseconds * Math.Pow(2, attempt++)) * (0.75 + (Random.Shared.NextDouble() / 2)));
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks, (_grace - away).Ticks));
                using var waiting = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, interrupts.Second);
                try
                {
                    await Task.Delay(delay, waiting.Token);
                }
                catch (OperationCanceledException) when (interrupts.Second.IsCancellationRequested)
                {
                    return ExitCodes.Interrupted;
                }

                first = new ClientFrame
                {
                    Attach = new AttachCommand
                    {
                        InvocationId = start.InvocationId,
                        AttachToken = _attachToken,
                        StdoutOffset = Volatile.Read(ref _stdoutWritten),
                        StderrOffset = Volatile.Read(ref _stderrWritten),
                    },
                };
                if (outcome.ReceivedAttached)
                {
                    attempt = 0;
                }
            }
        }
        finally
        {
            // The terminal before any `rbs:` line the caller prints.
            onResize?.Dispose();
            rawMode?.Dispose();
        }
    }

    /// <summary>The end of one call: the exit code, or why it ended without one (null error: the stream just ended).</summary>
    private sealed record CallOutcome(int? ExitCode, RpcException? Error, bool ReceivedFrame, bool ReceivedAttached, string? TreeOutdated = null);

    private FrameWriter? _writer;

    /// <summary>
    /// One ExecuteCommand call: the start (or attach) frame, then output to jbazel's own streams until the exit
    /// status or the call's end.
    /// </summary>
    private async Task<CallOutcome> RunCallAsync(ClientFrame first, long? lostAt, Action onRunning, CancellationToken cancellationToken)
    {
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var call = ExecuteCommandCall.Start(channels.ForAgent(allocation).CreateCallInvoker(), allocation.Headers, abort.Token);
        using var writer = new FrameWriter(call.RequestStream);
        var receivedFrame = false;
        var receivedAttached = false;
        CancellationTokenRegistration onFirst = default, onSecond = default;
        try
        {
            try
            {
                if (first.FrameCase == ClientFrame.FrameOneofCase.Start)
                {
                    // Ctrl-C while the agent is still being dialled cancels the call (exit 8): nothing runs yet.
                    using var starting = CancellationTokenSource.CreateLinkedTokenSource(abort.Token, interrupts.First);
                    await writer.WriteAsync(first, starting.Token);
                }
                else
                {
                    await writer.WriteAsync(first, abort.Token);
                }

                Volatile.Write(ref _writer, writer);

                // Registered after the first frame so an interrupt never precedes it.
                // First Ctrl-C: ask the agent to SIGINT bazel and keep streaming until bazel's own exit status. Pressed
                // while reconnecting, it goes out on the call that reattaches (once: the agent may have had it already).
                onFirst = interrupts.First.Register(() => _ = Task.Run(async () =>
                {
                    if (Volatile.Read(ref _interruptSent) == 0 && await writer.TryWriteAsync(new ClientFrame { Interrupt = new Interrupt() }, s_interruptWriteTimeout))
                    {
                        Interlocked.Exchange(ref _interruptSent, 1);
                    }
                }));

                // Second Ctrl-C: a forced interrupt, best effort, then leave at once.
                onSecond = interrupts.Second.Register(() =>
                {
                    Interlocked.Exchange(ref _forced, 1);
                    _ = Task.Run(async () =>
                    {
                        await writer.TryWriteAsync(new ClientFrame { Interrupt = new Interrupt { Force = true } }, s_forceWriteTimeout);
                        CancelQuietly(abort);
                    });
                });
                if (first.FrameCase == ClientFrame.FrameOneofCase.Start)
                {
                    onRunning();
                    StartStdinPump(cancellationToken);
                    _ = SendStdinAsync(writer, 0, stdinClosed: false, abort.Token);
                }
            }
            catch (Exception ex) when (ex is RpcException or InvalidOperationException or IOException or OperationCanceledException)
            {
                if (first.FrameCase == ClientFrame.FrameOneofCase.Start && interrupts.First.IsCancellationRequested)
                {
                    return new CallOutcome(ExitCodes.Interrupted, null, false, false);
                }

                // The call failed before it started (agent unreachable): reading the response below
                // surfaces the call's real status.
            }

            await foreach (var received in call.ResponseStream.ReadAllAsync(abort.Token))
            {
                using var frame = received;
                receivedFrame = true;
                switch (frame.FrameCase)
                {
                    case ServerFrame.FrameOneofCase.Started:
                        if (frame.Frame!.Started.AttachToken is { Length: > 0 } token)
                        {
                            _attachToken = token;
                            _grace = TimeSpan.FromMilliseconds(frame.Frame.Started.ReattachGraceMillis);
                        }

                        break;
                    case ServerFrame.FrameOneofCase.Attached:
                        receivedAttached = true;
                        var attached = frame.Frame!.Attached;
                        var after = lostAt is { } since ? Stopwatch.GetElapsedTime(since) : TimeSpan.Zero;
                        streams.WriteErrorLine(
                            $"rbs: connection to {allocation.Description} lost; reattached to invocation {attached.InvocationId} after {after.TotalSeconds:0.0} s");
                        _stdin.ResetSent(attached.StdinOffset);
                        _ = SendStdinAsync(writer, attached.StdinOffset, attached.StdinClosed, abort.Token);
                        break;
                    case ServerFrame.FrameOneofCase.Stdout:
                        if (!TryWrite(streams.Output, Output(frame)))
                        {
                            // stdout's reader is gone (`jbazel ... | head`): stop quietly, and the remote command too.
                            await writer.TryWriteAsync(new ClientFrame { Interrupt = new Interrupt() }, s_forceWriteTimeout);
                            CancelQuietly(abort);
                            return new CallOutcome(ExitCodes.BrokenPipe, null, true, receivedAttached);
                        }

                        Interlocked.Add(ref _stdoutWritten, Output(frame).Length);
                        Acknowledge(writer);
                        break;
                    case ServerFrame.FrameOneofCase.Stderr:
                        // A closed stderr is not a reason to abandon the build; its bytes are dropped.
                        TryWrite(streams.Error, Output(frame));
                        Interlocked.Add(ref _stderrWritten, Output(frame).Length);
                        Acknowledge(writer);
                        break;
                    case ServerFrame.FrameOneofCase.Exit:
                        if (_attachToken is not null)
                        {
                            await ConfirmExitAsync(call, writer, abort.Token);
                        }

                        return new CallOutcome(frame.Frame!.Exit.Code, null, true, receivedAttached);
                    case ServerFrame.FrameOneofCase.TreeOutdated:
                        return new CallOutcome(null, null, true, false, frame.Frame!.TreeOutdated.Reason is { Length: > 0 } reason ? reason : "another tree");
                    default:
                        break;
                }
            }

            if (Volatile.Read(ref _forced) == 1)
            {
                return new CallOutcome(ExitCodes.Interrupted, null, receivedFrame, receivedAttached);
            }

            return new CallOutcome(null, null, receivedFrame, receivedAttached);
        }
        catch (Exception ex) when (ex is RpcException or OperationCanceledException && Volatile.Read(ref _forced) == 1)
        {
            return new CallOutcome(ExitCodes.Interrupted, null, receivedFrame, receivedAttached);
        }
        catch (RpcException) when (cancellationToken.IsCancellationRequested)
        {
            throw new OperationCanceledException(cancellationToken);
        }
        catch (RpcException ex)
        {
            return new CallOutcome(null, ex, receivedFrame, receivedAttached);
        }
        finally
        {
            // Before the writer and the call go away, so no late interrupt touches them.
            Interlocked.CompareExchange(ref _writer, null, writer);
            onFirst.Dispose();
            onSecond.Dispose();
            CancelQuietly(abort);
        }
    }

    /// <summary>
    /// Tells a reattachable command's agent that everything arrived (a last ack, then the end of the request stream),
    /// and waits briefly for the call's end: until then the agent keeps the output for a reattach.
    /// </summary>
    private async Task ConfirmExitAsync(AsyncDuplexStreamingCall<ClientFrame, ReceivedFrame> call, FrameWriter writer, CancellationToken cancellationToken)
    {
        var ack = new OutputAck { StdoutOffset = Volatile.Read(ref _stdoutWritten), StderrOffset = Volatile.Read(ref _stderrWritten) };
        if (!await writer.TryWriteAsync(new ClientFrame { Ack = ack }, s_confirmTimeout) || !await writer.TryCompleteAsync(s_confirmTimeout))
        {
            return;
        }

        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(s_confirmTimeout);
            while (await call.ResponseStream.MoveNext(timeout.Token))
            {
                call.ResponseStream.Current.Dispose();
            }
        }
        catch (Exception ex) when (ex is RpcException or OperationCanceledException or InvalidOperationException or IOException)
        {
            // The exit status is what counts; the agent forgets the command after its grace time anyway.
        }
    }

    /// <summary>Every <see cref="AckInterval"/> bytes written: the agent may forget them.</summary>
    private void Acknowledge(FrameWriter writer)
    {
        var stdout = Volatile.Read(ref _stdoutWritten);
        var stderr = Volatile.Read(ref _stderrWritten);
        if (_attachToken is null || stdout + stderr - _acked < AckInterval)
        {
            return;
        }

        _acked = stdout + stderr;
        _ = writer.TryWriteAsync(new ClientFrame { Ack = new OutputAck { StdoutOffset = stdout, StderrOffset = stderr } }, s_interruptWriteTimeout);
    }

    /// <summary>SIGWINCH: the terminal the remote one stands for (stderr's) changed size; tell the agent.</summary>
    private static PosixSignalRegistration? ForwardWindowSizeChanges(CommandSession session)
    {
        if (!(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()))
        {
            return null;
        }

        return PosixSignalRegistration.Create(PosixSignal.SIGWINCH, context =>
        {
            if (TerminalProbe.TryGetWindowSize(2, out var columns, out var rows) && Volatile.Read(ref session._writer) is { } writer)
            {
                _ = writer.TryWriteAsync(new ClientFrame { Resize = new Resize { Columns = columns, Rows = rows } }, s_resizeWriteTimeout);
            }
        });
    }

    private void StartStdinPump(CancellationToken cancellationToken)
    {
        if (_stdinStarted)
        {
            return;
        }

        _stdinStarted = true;

        // A dedicated background thread: a read from a terminal or an idle pipe cannot be cancelled, and
        // it must not hold up jbazel's exit once bazel has finished.
        var thread = new Thread(() => PumpStdin(cancellationToken))
        {
            IsBackground = true,
            Name = "jbazel stdin",
        };
        thread.Start();
    }

    /// <summary>Reads jbazel's stdin into <see cref="_stdin"/>, from where each call's sender sends it.</summary>
    private void PumpStdin(CancellationToken cancellationToken)
    {
        var buffer = new byte[StdinChunkSize];

        // A background job must not touch its terminal: the tool gets an empty stdin instead.
        while (TerminalProbe.MayReadStdin() && !cancellationToken.IsCancellationRequested)
        {
            int read;
            try
            {
                read = streams.Input.Read(buffer, 0, buffer.Length);
            }
            catch (IOException)
            {
                read = 0;
            }

            if (read == 0 || !_stdin.Append(buffer.AsSpan(0, read).ToArray(), cancellationToken))
            {
                break;
            }
        }

        _stdin.AppendEof();
    }

    /// <summary>Sends stdin to one call, from the agent's offset, until end of input or the call's end.</summary>
    private async Task SendStdinAsync(FrameWriter writer, long offset, bool stdinClosed, CancellationToken cancellationToken)
    {
        if (stdinClosed)
        {
            return;
        }

        try
        {
            while (true)
            {
                if (!_stdin.TryNext(offset, out var bytes, out var eof, out var changed))
                {
                    await changed.WaitAsync(cancellationToken);
                    continue;
                }

                if (eof)
                {
                    await writer.WriteAsync(new ClientFrame { StdinEof = new StdinEof() }, cancellationToken);
                    return;
                }

                await writer.WriteAsync(new ClientFrame { Stdin = UnsafeByteOperations.UnsafeWrap(bytes) }, cancellationToken);
                offset += bytes.Length;
                _stdin.Sent(offset);
            }
        }
        catch (Exception ex) when (ex is RpcException or OperationCanceledException or InvalidOperationException or ObjectDisposedException or IOException)
        {
            // The call is over; the next one (if any) resends from the agent's offset.
        }
    }

    /// <summary>An output frame's bytes: pooled when it came alone, else the parsed frame's field.</summary>
    private static ReadOnlySpan<byte> Output(ReceivedFrame frame) => frame.Frame switch
    {
        null => frame.Output,
        { FrameCase: ServerFrame.FrameOneofCase.Stdout } parsed => parsed.Stdout.Span,
        var parsed => parsed.Stderr.Span,
    };

    private static bool TryWrite(Stream stream, ReadOnlySpan<byte> bytes)
    {
        try
        {
            stream.Write(bytes);
            stream.Flush();
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static void CancelQuietly(CancellationTokenSource source)
    {
        try
        {
            source.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private RemoteFailure Failure(RpcException ex, bool receivedFrame)
    {
        if (!RemoteFailure.IsTransient(ex))
        {
            return new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                $"{allocation.Description} rejected the command ({ex.StatusCode}): {RemoteFailure.Describe(ex)}");
        }

        if (!receivedFrame && IsConnectFailure(ex))
        {
            return new RemoteFailure(ExitCodes.TransientRemoteError, allocation.ThroughGateway
                ? $"cannot reach the gateway at {allocation.Response.Address} ({RemoteFailure.Describe(ex)}) to run the command on agent {allocation.AgentId}. " +
                    "Run the command again once the gateway answers; nothing ran."
                : $"cannot reach agent {allocation.AgentId} at {allocation.Response.Address} ({RemoteFailure.Describe(ex)}). " +
                    "Run the command again; GetServer starts a new agent if this one died.");
        }

        return Lost(RemoteFailure.Describe(ex), fromGateway: allocation.ThroughGateway && ex.Status.DebugException is null);
    }

    /// <summary>
    /// The stream broke before the exit status. Which hop broke decides the next step: in tunnel mode a transport
    /// failure is the connection to the gateway (the agent lives on, and stops the command as for a Ctrl-C), while a
    /// status the gateway wrote means its tunnel to the agent was lost; in direct mode it is the agent itself.
    /// </summary>
    private RemoteFailure Lost(string reason, bool fromGateway = false)
    {
        var gateway = allocation.Response.Address;
        var agent = allocation.AgentId;
        return new(ExitCodes.TransientRemoteError, (allocation.ThroughGateway, fromGateway) switch
        {
            (true, true) =>
                $"the gateway at {gateway} lost its tunnel to agent {agent} mid-command ({reason}). " +
                "Run the command again; GetServer starts a new agent if this one died.",
            (true, false) =>
                $"lost the connection to the gateway at {gateway} mid-command ({reason}); agent {agent} stops the command when its stream ends. " +
                "Run the command again once the gateway answers; the same agent serves it.",
            _ =>
                $"lost the connection to agent {agent} at {allocation.Response.Address} mid-command ({reason}). " +
                "Run the command again; GetServer starts a new agent if this one died.",
        });
    }

    /// <summary>
    /// The connection was lost and no reattach succeeded within the agent's grace time: which hop failed decides the
    /// next step, as in <see cref="Lost"/>; <paramref name="error"/> is the last attempt's failure.
    /// </summary>
    private RemoteFailure GaveUp(RpcException? error, string invocationId, bool agentGone)
    {
        var reason = error is null ? "the stream ended without an exit status" : RemoteFailure.Describe(error);
        var fromGateway = allocation.ThroughGateway && error is not null && error.Status.DebugException is null;
        var gateway = allocation.Response.Address;
        var agent = allocation.AgentId;
        var within = agentGone ? $"({reason}: the agent is gone)" : $"within the agent's grace time of {_grace.TotalSeconds:0.#} s ({reason})";
        return new(ExitCodes.TransientRemoteError, (allocation.ThroughGateway, fromGateway) switch
        {
            (true, true) =>
                $"the gateway at {gateway} lost its tunnel to agent {agent} mid-command and jbazel could not reattach to invocation {invocationId} {within}; " +
                "the agent stops the command. Run the command again; GetServer starts a new agent if this one died.",
            (true, false) =>
                $"lost the connection to the gateway at {gateway} mid-command and could not reattach to invocation {invocationId} {within}; agent {agent} stops the command. " +
                "Run the command again once the gateway answers; the same agent serves it.",
            _ =>
                $"lost the connection to agent {agent} at {allocation.Response.Address} mid-command and could not reattach to invocation {invocationId} {within}; " +
                "the agent stops the command. Run the command again; GetServer starts a new agent if this one died.",
        });
    }

    private static bool IsRefused(RpcException ex)
    {
        for (Exception? inner = ex.Status.DebugException; inner is not null; inner = inner.InnerException)
        {
            if (inner is SocketException { SocketErrorCode: SocketError.ConnectionRefused })
            {
                return true;
            }
        }

        return false;
    }

    private static bool IsConnectFailure(RpcException ex)
    {
        for (Exception? inner = ex.Status.DebugException; inner is not null; inner = inner.InnerException)
        {
            if (inner is SocketException or HttpRequestException { HttpRequestError: HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError })
            {
                return true;
            }
        }

        return false;
    }
}
