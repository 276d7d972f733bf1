using System.Net.Http;
using System.Net.Sockets;
using Google.Protobuf;
using Grpc.Core;
using Rbs.JBazel.Terminal;
using Rbs.V1;

namespace Rbs.JBazel.Remote;

/// <summary>
/// One ExecuteCommand stream: sends the start frame, pumps stdin, writes the agent's stdout/stderr bytes
/// to jbazel's own, forwards Ctrl-C, and returns the remote tool's exit code.
/// </summary>
internal sealed class CommandSession(Allocation allocation, ChannelPool channels, StandardStreams streams, InterruptSignals interrupts)
{
    public const int StdinChunkSize = 64 * 1024;

    private static readonly TimeSpan s_interruptWriteTimeout = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan s_forceWriteTimeout = TimeSpan.FromSeconds(1);

    public async Task<int> RunAsync(StartCommand start, CancellationToken cancellationToken)
    {
        if (interrupts.First.IsCancellationRequested)
        {
            // Ctrl-C between allocation and start: nothing runs remotely yet.
            return ExitCodes.Interrupted;
        }

        var client = new V1.Agent.AgentClient(channels.Get(allocation.AgentAddress));
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var call = client.ExecuteCommand(allocation.Headers, cancellationToken: abort.Token);
        using var writer = new FrameWriter(call.RequestStream);
        var forced = 0;
        var receivedFrame = false;

        CancellationTokenRegistration onFirst = default, onSecond = default;

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

            await foreach (var frame in call.ResponseStream.ReadAllAsync(abort.Token))
            {
                receivedFrame = true;
                switch (frame.FrameCase)
                {
                    case ServerFrame.FrameOneofCase.Stdout:
                        if (!TryWrite(streams.Output, frame.Stdout))
                        {
                            // stdout's reader is gone (`jbazel ... | head`): stop quietly; dropping the call
                            // interrupts the remote command.
                            CancelQuietly(abort);
                            return ExitCodes.BrokenPipe;
                        }

                        break;
                    case ServerFrame.FrameOneofCase.Stderr:
                        // A closed stderr is not a reason to abandon the build; its bytes are dropped.
                        TryWrite(streams.Error, frame.Stderr);
                        break;
                    case ServerFrame.FrameOneofCase.Exit:
                        return frame.Exit.Code;
                    default:
                        break;
                }
            }

            if (Volatile.Read(ref forced) == 1)
            {
                return ExitCodes.Interrupted;
            }

            throw Lost("the stream ended without an exit status");
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
            // Before the writer and the call go away, so no late interrupt touches them.
            onFirst.Dispose();
            onSecond.Dispose();
        }
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

    private static bool TryWrite(Stream stream, ByteString bytes)
    {
        try
        {
            stream.Write(bytes.Span);
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
        var agent = $"agent {allocation.AgentId} at {allocation.Response.Address}";
        if (!RemoteFailure.IsTransient(ex))
        {
            return new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                $"{agent} rejected the command ({ex.StatusCode}): {RemoteFailure.Describe(ex)}");
        }

        if (!receivedFrame && IsConnectFailure(ex))
        {
            return new RemoteFailure(ExitCodes.TransientRemoteError,
                $"cannot reach {agent} ({RemoteFailure.Describe(ex)}). Run the command again; a new agent will be allocated if it died.");
        }

        return Lost(RemoteFailure.Describe(ex));
    }

    private RemoteFailure Lost(string reason) =>
        new(ExitCodes.TransientRemoteError,
            $"lost the connection to agent {allocation.AgentId} at {allocation.Response.Address} mid-command ({reason}). " +
            "Run the command again; a new agent will be allocated if it died.");

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
