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

    private static readonly TimeSpan s_interruptWriteTimeout = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan s_forceWriteTimeout = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan s_resizeWriteTimeout = TimeSpan.FromSeconds(5);

    public async Task<int> RunAsync(StartCommand start, CancellationToken cancellationToken)
    {
        if (interrupts.First.IsCancellationRequested)
        {
            // Ctrl-C between allocation and start: nothing runs remotely yet.
            return ExitCodes.Interrupted;
        }

        using var abort = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var call = ExecuteCommandCall.Start(channels.Get(allocation.AgentAddress).CreateCallInvoker(), allocation.Headers, abort.Token);
        using var writer = new FrameWriter(call.RequestStream);
        var forced = 0;
        var receivedFrame = false;

        CancellationTokenRegistration onFirst = default, onSecond = default;
        PosixSignalRegistration? onResize = null;
        RawMode? rawMode = null;

        try
        {
            try
            {
                // Ctrl-C while the agent is still being dialled cancels the call (exit 8): nothing runs yet.
                using (var starting = CancellationTokenSource.CreateLinkedTokenSource(abort.Token, interrupts.First))
                {
                    await writer.WriteAsync(new ClientFrame { Start = start }, starting.Token);
                }

                // Registered after the start frame so an interrupt never precedes it.
                // First Ctrl-C: ask the agent to SIGINT bazel and keep streaming until bazel's own exit status.
                onFirst = interrupts.First.Register(() =>
                    _ = writer.TryWriteAsync(new ClientFrame { Interrupt = new Interrupt() }, s_interruptWriteTimeout));

                // Second Ctrl-C: a forced interrupt, best effort, then leave at once. Dropping the call also
                // tells the agent the client is gone.
                onSecond = interrupts.Second.Register(() =>
                {
                    Interlocked.Exchange(ref forced, 1);
                    _ = Task.Run(async () =>
                    {
                        await writer.TryWriteAsync(new ClientFrame { Interrupt = new Interrupt { Force = true } }, s_forceWriteTimeout);
                        CancelQuietly(abort);
                    });
                });
                if (start.Terminal is { StderrIsTty: true })
                {
                    onResize = ForwardWindowSizeChanges(writer);
                    if (start.Terminal.StdinIsTty)
                    {
                        // Keystrokes go to the agent's terminal as typed; its line discipline echoes and edits.
                        rawMode = RawMode.Enter(0);
                    }
                }

                StartStdinPump(writer, abort.Token);
            }
            catch (Exception ex) when (ex is RpcException or InvalidOperationException or IOException or OperationCanceledException)
            {
                if (interrupts.First.IsCancellationRequested)
                {
                    return ExitCodes.Interrupted;
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
                    case ServerFrame.FrameOneofCase.Stdout:
                        if (!TryWrite(streams.Output, Output(frame)))
                        {
                            // stdout's reader is gone (`jbazel ... | head`): stop quietly; dropping the call
                            // interrupts the remote command.
                            CancelQuietly(abort);
                            return ExitCodes.BrokenPipe;
                        }

                        break;
                    case ServerFrame.FrameOneofCase.Stderr:
                        // A closed stderr is not a reason to abandon the build; its bytes are dropped.
                        TryWrite(streams.Error, Output(frame));
                        break;
                    case ServerFrame.FrameOneofCase.Exit:
                        return frame.Frame!.Exit.Code;
                    default:
                        break;
                }
            }

            if (Volatile.Read(ref forced) == 1)
            {
                return ExitCodes.Interrupted;
            }

            throw Lost("the stream ended without an exit status", fromGateway: allocation.ThroughGateway);
        }
        catch (Exception ex) when (ex is RpcException or OperationCanceledException && Volatile.Read(ref forced) == 1)
        {
            return ExitCodes.Interrupted;
        }
        catch (RpcException) when (cancellationToken.IsCancellationRequested)
        {
            throw new OperationCanceledException(cancellationToken);
        }
        catch (RpcException ex)
        {
            throw Failure(ex, receivedFrame);
        }
        finally
        {
            // Before the writer and the call go away, so no late interrupt touches them; the terminal before any
            // `rbs:` line the caller prints.
            onFirst.Dispose();
            onSecond.Dispose();
            onResize?.Dispose();
            rawMode?.Dispose();
        }
    }

    /// <summary>SIGWINCH: the terminal the remote one stands for (stderr's) changed size; tell the agent.</summary>
    private static PosixSignalRegistration? ForwardWindowSizeChanges(FrameWriter writer)
    {
        if (!(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()))
        {
            return null;
        }

        return PosixSignalRegistration.Create(PosixSignal.SIGWINCH, context =>
        {
            if (TerminalProbe.TryGetWindowSize(2, out var columns, out var rows))
            {
                _ = writer.TryWriteAsync(new ClientFrame { Resize = new Resize { Columns = columns, Rows = rows } }, s_resizeWriteTimeout);
            }
        });
    }

    private void StartStdinPump(FrameWriter writer, CancellationToken cancellationToken)
    {
        // A dedicated background thread: a read from a terminal or an idle pipe cannot be cancelled, and
        // it must not hold up jbazel's exit once bazel has finished.
        var thread = new Thread(() => PumpStdin(writer, cancellationToken))
        {
            IsBackground = true,
            Name = "jbazel stdin",
        };
        thread.Start();
    }

    private void PumpStdin(FrameWriter writer, CancellationToken cancellationToken)
    {
        var buffer = new byte[StdinChunkSize];
        try
        {
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

                if (read == 0)
                {
                    break;
                }

                writer.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFrom(buffer, 0, read) }, cancellationToken)
                    .GetAwaiter().GetResult();
            }

            writer.WriteAsync(new ClientFrame { StdinEof = new StdinEof() }, cancellationToken).GetAwaiter().GetResult();
        }
        catch (Exception ex) when (ex is RpcException or OperationCanceledException or InvalidOperationException or ObjectDisposedException or IOException)
        {
            // The call is over; there is nobody left to feed.
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
