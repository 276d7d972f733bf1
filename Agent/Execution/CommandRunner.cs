using System.ComponentModel;
using System.Threading.Channels;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Agent.Hosting;
using Rbs.Agent.Outputs;
using Rbs.V1;

namespace Rbs.Agent.Execution;

/// <summary>Runs one ExecuteCommand stream: validates the start frame, runs the build tool, pipes bytes both ways.</summary>
internal sealed partial class CommandRunner(
    IOptions<AgentOptions> options,
    CommandTracker tracker,
    OutputCollector outputs,
    TimeProvider time,
    ILogger<CommandRunner> logger)
{
    /// <summary>
    /// Frames waiting for the response stream. Small on purpose: together with the two 64 KiB pipe buffers this is
    /// everything the agent holds per command, whatever the tool writes and however slowly the client reads.
    /// </summary>
    internal const int FrameChannelCapacity = 8;

    /// <summary>After the tool's group is gone, a pipe read that sees nothing for this long means an escaped
    /// descendant holds the pipe open; stop waiting for its EOF.</summary>
    internal static readonly TimeSpan DrainIdleTimeout = TimeSpan.FromSeconds(5);

    private readonly AgentOptions _options = options.Value;
    private readonly Lazy<string> _workspace = new(() => Native.RealPath(options.Value.Workspace) ?? options.Value.Workspace);

    /// <summary>The workspace root with symlinks resolved.</summary>
    public string WorkspaceRealPath => _workspace.Value;

    public async Task RunAsync(
        IAsyncStreamReader<ClientFrame> requests,
        IServerStreamWriter<ServerFrame> responses,
        ServerCallContext context)
    {
        var callToken = context.CancellationToken;
        var start = await ReadStartAsync(requests, context.Peer, callToken);

        if (tracker.IsStopping)
        {
            throw Reject(StatusCode.Unavailable, "the agent is shutting down; retry to get a new agent.", context.Peer);
        }

        foreach (var arg in start.Args)
        {
            if (arg.Contains('\0', StringComparison.Ordinal))
            {
                throw Reject(StatusCode.InvalidArgument, "an argument contains a NUL character, which no process can receive.", context.Peer);
            }
        }

        string workingDirectory;
        try
        {
            workingDirectory = WorkspacePaths.ResolveWorkingDirectory(WorkspaceRealPath, start.RelativeWorkingDirectory);
        }
        catch (RpcException ex)
        {
            Log.Rejected(logger, context.Peer, ex.Status.StatusCode, ex.Status.Detail);
            throw;
        }

        var toolPath = BuildToolLocator.Resolve(_options.BuildTool, Environment.GetEnvironmentVariable("PATH"), out var toolError)
            ?? throw Reject(StatusCode.FailedPrecondition, toolError, context.Peer);

        var dropped = new List<string>();
        var environment = ToolEnvironment.Build(start.Env, start.Terminal, dropped);
        if (dropped.Count > 0)
        {
            Log.DroppedEnvironment(logger, string.Join(", ", dropped));
        }

        var invocationId = string.IsNullOrEmpty(start.InvocationId) ? Guid.NewGuid().ToString() : start.InvocationId;

        // collect_outputs on a build: bazel also writes a BEP file, read after a successful exit (Agent/Outputs/).
        var collection = outputs.Begin(invocationId, start);

        ToolProcess process;
        try
        {
            process = ToolProcess.Start(toolPath, _options.BuildTool, collection?.Arguments ?? start.Args, workingDirectory, environment);
        }
        catch (Win32Exception ex)
        {
            throw Reject(StatusCode.FailedPrecondition, $"could not start the build tool: {ex.Message}", context.Peer);
        }

        using (process)
        {
            await SuperviseAsync(process, invocationId, start, collection, requests, responses, callToken);
        }
    }

    private async Task SuperviseAsync(
        ToolProcess process,
        string invocationId,
        StartCommand start,
        OutputCollection? collection,
        IAsyncStreamReader<ClientFrame> requests,
        IServerStreamWriter<ServerFrame> responses,
        CancellationToken callToken)
    {
        var startedAt = time.GetTimestamp();
        Log.CommandStarted(logger, invocationId, process.Pid, start.Args.Count, start.RelativeWorkingDirectory);

        using var interrupter = new Interrupter(process, _options.InterruptGracePeriod, _options.TerminateGracePeriod, time, logger);
        using var command = tracker.Begin(invocationId, () => interrupter.Interrupt(force: false, "agent stopping"));
        using var delivery = CancellationTokenSource.CreateLinkedTokenSource(callToken);
        using var readerStop = CancellationTokenSource.CreateLinkedTokenSource(callToken);
        // A client that goes away (cancel, disconnect, deadline) counts as Ctrl-C.
        using var onCallCancelled = callToken.Register(() => interrupter.Interrupt(force: false, "client went away"));

        var frames = Channel.CreateBounded<ServerFrame>(new BoundedChannelOptions(FrameChannelCapacity)
        {
            SingleReader = true,
            SingleWriter = false,
            FullMode = BoundedChannelFullMode.Wait,
        });
        frames.Writer.TryWrite(new ServerFrame
        {
            Started = new CommandStarted { InvocationId = invocationId, Pid = process.Pid, AgentId = _options.AgentId },
        });

        var writer = WriteFramesAsync(frames.Reader, responses, delivery, interrupter);
        using var stdout = new OutputPump(process.StandardOutput, isStdout: true, frames.Writer, delivery.Token);
        using var stderr = new OutputPump(process.StandardError, isStdout: false, frames.Writer, delivery.Token);
        var pumps = Task.WhenAll(
            Task.Run(() => stdout.RunAsync(time), CancellationToken.None),
            Task.Run(() => stderr.RunAsync(time), CancellationToken.None));
        var reader = ReadClientFramesAsync(requests, process, interrupter, readerStop.Token);

        var exit = await process.Exited;

        // Whatever is left in the tool's process group is an orphan of this command (bazel's server is not: it
        // daemonizes into its own session).
        if (process.SignalGroup(Native.SIGKILL))
        {
            Log.KilledLeftovers(logger, invocationId, process.Pid);
        }

        interrupter.Dispose();
        await DrainAsync(pumps, [stdout, stderr], invocationId);
        frames.Writer.TryComplete();
        await writer;

        command.Dispose();
        var elapsed = time.GetElapsedTime(startedAt);
        Log.CommandEnded(logger, invocationId, process.Pid, exit.Code, exit.Signal, elapsed, stdout.Bytes, stderr.Bytes, interrupter.WasInterrupted);

        if (collection is not null)
        {
            // Before the exit frame, so a client's ListOutputs right after it finds this build's outputs.
            await collection.CompleteAsync(exit.Code);
        }

        if (!delivery.IsCancellationRequested)
        {
            try
            {
                await responses.WriteAsync(new ServerFrame { Exit = new ExitStatus { Code = exit.Code, Signal = exit.Signal } }, callToken);
            }
            catch (Exception ex) when (ex is OperationCanceledException or InvalidOperationException or IOException)
            {
                Log.ClientGoneBeforeExit(logger, invocationId);
            }
        }

        readerStop.Cancel();
        await reader;
    }

    private async Task<StartCommand> ReadStartAsync(IAsyncStreamReader<ClientFrame> requests, string peer, CancellationToken cancellationToken)
    {
        if (!await requests.MoveNext(cancellationToken))
        {
            throw Reject(StatusCode.InvalidArgument, "the request stream ended before any frame; the first ClientFrame must be 'start'.", peer);
        }

        var first = requests.Current;
        if (first.FrameCase != ClientFrame.FrameOneofCase.Start)
        {
            throw Reject(
                StatusCode.InvalidArgument,
                $"the first ClientFrame must be 'start' (args, working directory, env), but it was '{first.FrameCase}'.",
                peer);
        }

        return first.Start;
    }

    /// <summary>The only writer of the response stream (gRPC forbids concurrent writes).</summary>
    private async Task WriteFramesAsync(
        ChannelReader<ServerFrame> frames,
        IServerStreamWriter<ServerFrame> responses,
        CancellationTokenSource delivery,
        Interrupter interrupter)
    {
        try
        {
            await foreach (var frame in frames.ReadAllAsync(delivery.Token))
            {
                await responses.WriteAsync(frame, delivery.Token);
            }
        }
        catch (Exception ex)
        {
            // Whatever the failure (usually the client is gone), stop delivering so the pumps switch to draining
            // instead of blocking on a channel nobody empties, and treat it as Ctrl-C.
            Log.DeliveryStopped(logger, ex.GetType().Name);
            await delivery.CancelAsync();
            interrupter.Interrupt(force: false, "client went away");
        }
    }

    private async Task ReadClientFramesAsync(
        IAsyncStreamReader<ClientFrame> requests,
        ToolProcess process,
        Interrupter interrupter,
        CancellationToken cancellationToken)
    {
        var stdin = process.StandardInput;
        var stdinOpen = true;
        try
        {
            while (await requests.MoveNext(cancellationToken))
            {
                var frame = requests.Current;
                switch (frame.FrameCase)
                {
                    case ClientFrame.FrameOneofCase.Stdin when stdinOpen:
                        try
                        {
                            // Blocks while the tool does not read: backpressure to the client through HTTP/2 flow control.
                            await stdin.WriteAsync(frame.Stdin.Memory, process.ExitedToken);
                        }
                        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException)
                        {
                            stdinOpen = false;
                            Log.StdinClosedByTool(logger, process.Pid);
                        }

                        break;
                    case ClientFrame.FrameOneofCase.StdinEof when stdinOpen:
                        stdinOpen = false;
                        await stdin.DisposeAsync();
                        break;
                    case ClientFrame.FrameOneofCase.Interrupt:
                        interrupter.Interrupt(frame.Interrupt.Force, frame.Interrupt.Force ? "client forced interrupt" : "client interrupt");
                        break;
                    case ClientFrame.FrameOneofCase.Start:
                        Log.DuplicateStart(logger, process.Pid);
                        break;
                    default:
                        break;
                }
            }

            // Half-close: the client will send nothing more, so the tool's stdin ends too (like `bazel < /dev/null`).
            // It is not an interrupt; the command runs on and its output still flows.
            if (stdinOpen)
            {
                await stdin.DisposeAsync();
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException or InvalidOperationException)
        {
            // The command ended or the client went away (handled through the call's cancellation token).
        }
        catch (Exception ex)
        {
            // A broken request stream must not fail a command that is already running; stdin just ends here.
            Log.RequestStreamFailed(logger, process.Pid, ex);
        }
    }

    private async Task DrainAsync(Task pumps, OutputPump[] pipePumps, string invocationId)
    {
        while (!pumps.IsCompleted)
        {
            await Task.WhenAny(pumps, Task.Delay(TimeSpan.FromMilliseconds(250), time));
            var now = time.GetTimestamp();
            foreach (var pump in pipePumps)
            {
                var since = pump.ReadStartedTimestamp;
                if (since != 0 && time.GetElapsedTime(since, now) > DrainIdleTimeout)
                {
                    Log.PipeHeldOpen(logger, invocationId, DrainIdleTimeout);
                    pump.AbortRead();
                }
            }
        }

        await pumps;
    }

    private RpcException Reject(StatusCode code, string message, string peer)
    {
        Log.Rejected(logger, peer, code, message);
        return new RpcException(new Status(code, message));
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 100, Level = LogLevel.Information, Message = "Command {InvocationId} started: pid {Pid}, {ArgCount} args, in '{RelativeWorkingDirectory}'")]
        public static partial void CommandStarted(ILogger logger, string invocationId, int pid, int argCount, string relativeWorkingDirectory);

        [LoggerMessage(EventId = 101, Level = LogLevel.Information, Message = "Command {InvocationId} (pid {Pid}) ended: exit code {ExitCode}, signal {Signal}, after {Duration}; {StdoutBytes} bytes stdout, {StderrBytes} bytes stderr; interrupted: {Interrupted}")]
        public static partial void CommandEnded(ILogger logger, string invocationId, int pid, int exitCode, int signal, TimeSpan duration, long stdoutBytes, long stderrBytes, bool interrupted);

        [LoggerMessage(EventId = 102, Level = LogLevel.Warning, Message = "Rejected ExecuteCommand from {Peer}: {StatusCode}: {Message}")]
        public static partial void Rejected(ILogger logger, string peer, StatusCode statusCode, string message);

        [LoggerMessage(EventId = 103, Level = LogLevel.Debug, Message = "Dropped client environment variables that are not allow-listed: {Names}")]
        public static partial void DroppedEnvironment(ILogger logger, string names);

        [LoggerMessage(EventId = 104, Level = LogLevel.Information, Message = "Client stopped receiving ({Reason}); discarding the rest of the output")]
        public static partial void DeliveryStopped(ILogger logger, string reason);

        [LoggerMessage(EventId = 105, Level = LogLevel.Debug, Message = "Tool pid {Pid} closed its stdin; further stdin frames are dropped")]
        public static partial void StdinClosedByTool(ILogger logger, int pid);

        [LoggerMessage(EventId = 106, Level = LogLevel.Warning, Message = "Ignored a second 'start' frame for the command of tool pid {Pid}")]
        public static partial void DuplicateStart(ILogger logger, int pid);

        [LoggerMessage(EventId = 107, Level = LogLevel.Debug, Message = "Command {InvocationId}: SIGKILLed what was left in tool pid {Pid}'s process group after it exited")]
        public static partial void KilledLeftovers(ILogger logger, string invocationId, int pid);

        [LoggerMessage(EventId = 108, Level = LogLevel.Warning, Message = "Command {InvocationId}: an escaped descendant kept an output pipe open for {Timeout} after the tool exited; stopped reading it")]
        public static partial void PipeHeldOpen(ILogger logger, string invocationId, TimeSpan timeout);

        [LoggerMessage(EventId = 110, Level = LogLevel.Warning, Message = "Reading client frames for tool pid {Pid} failed; no more stdin or interrupts from this client")]
        public static partial void RequestStreamFailed(ILogger logger, int pid, Exception exception);

        [LoggerMessage(EventId = 109, Level = LogLevel.Information, Message = "Command {InvocationId}: the client was gone before the exit frame")]
        public static partial void ClientGoneBeforeExit(ILogger logger, string invocationId);
    }
}
