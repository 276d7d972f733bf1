using System.ComponentModel;
using System.Threading.Channels;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Agent.Bazelrc;
using Rbs.Agent.Dashboard;
using Rbs.Agent.Execution.Reattach;
using Rbs.Agent.Hosting;
using Rbs.Agent.Lifetime;
using Rbs.Agent.Outputs;
using Rbs.Agent.Sync;
using Rbs.Shared.Text;
using Rbs.V1;

namespace Rbs.Agent.Execution;

/// <summary>Runs one ExecuteCommand stream: validates the start frame, runs the build tool, pipes bytes both ways.</summary>
internal sealed partial class CommandRunner(
    IOptions<AgentOptions> options,
    IOptions<ReattachOptions> reattachOptions,
    CommandTracker tracker,
    ResumableCommands resumable,
    OutputCollector outputs,
    ClientBazelrcStore clientBazelrc,
    WorkspaceSynchronizer workspaceSync,
    BuildToolServers servers,
    BazelWrapperShortcut wrapperShortcut,
    CommandLog commandLog,
    TimeProvider time,
    CommandMetrics metrics,
    CommandAudit audit,
    ILogger<CommandRunner> logger)
{
    /// <summary>
    /// Frames waiting for the response stream. Small on purpose: a pipe's frames wrap its pump's segments (at most
    /// <see cref="OutputPump.SegmentCount"/> × <see cref="OutputPump.SegmentSize"/> per pipe, queued or not) and a
    /// terminal's frames are copies of at most <see cref="OutputPump.ChunkSize"/>; with the kernel's pipe buffers
    /// (<see cref="ToolProcess.OutputPipeSize"/> each) that is everything the agent holds per command, whatever the
    /// tool writes and however slowly the client reads.
    /// </summary>
    internal const int FrameChannelCapacity = 8;

    /// <summary>After the tool's group is gone, a pipe read that sees nothing for this long means an escaped
    /// descendant holds the pipe open; stop waiting for its EOF.</summary>
    internal static readonly TimeSpan DrainIdleTimeout = TimeSpan.FromSeconds(5);

    /// <summary>A client's invocation id names its outputs and appears in every log line of the command: a UUID fits.</summary>
    internal const int MaxInvocationIdLength = 128;

    private readonly AgentOptions _options = options.Value;
    private readonly ReattachOptions _reattach = reattachOptions.Value;
    private readonly Lazy<string> _workspace = new(() => Native.RealPath(options.Value.Workspace) ?? options.Value.Workspace);

    /// <summary>The workspace root with symlinks resolved.</summary>
    public string WorkspaceRealPath => _workspace.Value;

    public async Task RunAsync(
        IAsyncStreamReader<ClientFrame> requests,
        IServerStreamWriter<ServerFrame> responses,
        ServerCallContext context)
    {
        var callToken = context.CancellationToken;
        var first = await ReadFirstAsync(requests, context.Peer, callToken);
        if (first.FrameCase == ClientFrame.FrameOneofCase.Attach)
        {
            await AttachAsync(first.Attach, requests, responses, context);
            return;
        }

        var start = first.Start;

        if (tracker.IsStopping)
        {
            throw Reject(StatusCode.Unavailable, "the agent is shutting down; retry to get a new agent.", context.Peer);
        }

        if (start.RawArgs.Count > 0)
        {
            if (start.RawArgs.Count != start.Args.Count)
            {
                throw Reject(StatusCode.InvalidArgument,
                    $"raw_args has {start.RawArgs.Count} arguments and args {start.Args.Count}; send both with the same arguments.", context.Peer);
            }

            // The exact bytes replace their U+FFFD stand-ins (in memory only: bad bytes are lone surrogates, which
            // ToolProcess writes back as the bytes; Shared/Text/ArgumentBytes.cs).
            var exact = start.RawArgs.Select(raw => ArgumentBytes.Decode(raw.Span)).ToList();
            start.Args.Clear();
            start.Args.AddRange(exact);
        }

        foreach (var arg in start.Args)
        {
            if (arg.Contains('\0', StringComparison.Ordinal))
            {
                throw Reject(StatusCode.InvalidArgument, "an argument contains a NUL character, which no process can receive.", context.Peer);
            }
        }

        if (ToolEnvironment.CheckLimits(start.Env) is { } tooLarge)
        {
            throw Reject(StatusCode.InvalidArgument, tooLarge, context.Peer);
        }

        if (start.InvocationId.Length > MaxInvocationIdLength)
        {
            throw Reject(StatusCode.InvalidArgument,
                $"invocation_id is {start.InvocationId.Length} characters long; at most {MaxInvocationIdLength} are accepted (send a UUID).", context.Peer);
        }

        string workingDirectory;
        IReadOnlyList<string> args;
        try
        {
            await workspaceSync.EnsureWholeTreeAsync(callToken);
            if (!start.ExpectedTreeDigest.IsEmpty && await workspaceSync.WhyNotHoldingAsync(start.ExpectedTreeDigest.Memory, callToken) is { } outdated)
            {
                // Before anything is tracked or run: the client syncs and sends this very start again.
                Log.TreeOutdated(logger, context.Peer, outdated);
                await responses.WriteAsync(new ServerFrame { TreeOutdated = new TreeOutdated { Reason = outdated } }, callToken);
                return;
            }

            workingDirectory = WorkspacePaths.ResolveWorkingDirectory(WorkspaceRealPath, start.RelativeWorkingDirectory);
            // The client's bazelrc files in front of its arguments (client_bazelrc), before outputs collection looks for the verb.
            args = clientBazelrc.Arguments(start);
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

        // collect_outputs on a build: bazel also writes a BEP file, read after a successful exit; collect_test_logs on a
        // test: bazel's testlogs are read after the exit (Agent/Outputs/).
        var collection = outputs.Begin(invocationId, start, args, WorkspaceRealPath);

        if (start.Reattachable && resumable.Find(invocationId) is not null)
        {
            throw Reject(StatusCode.AlreadyExists, $"invocation {invocationId} is already running on this agent; send a new invocation_id for a new command.", context.Peer);
        }

        var arguments = collection?.Arguments ?? args;
        // Debian's bazel wrapper: what it would exec, without its ~145 ms of bash and forks (BazelWrapperShortcut).
        var launch = wrapperShortcut.Apply(new ToolStartInfo(toolPath, _options.BuildTool, arguments, workingDirectory, environment)
        {
            Terminal = TerminalFor(start.Terminal),
            DiesWithAgent = true,
        });
        ToolProcess process;
        try
        {
            process = await ToolProcess.StartAsync(launch);
        }
        catch (Win32Exception ex)
        {
            throw Reject(StatusCode.FailedPrecondition, $"could not start the build tool: {ex.Message}", context.Peer);
        }

        // Its server is shut down when the agent stops (Agent/Lifetime/BuildToolServers.cs).
        servers.Record(arguments);

        if (start.Reattachable && _reattach.ReattachGrace > TimeSpan.Zero)
        {
            await RunResumableAsync(process, invocationId, start, collection, requests, responses, callToken);
            return;
        }

        using (process)
        {
            await SuperviseAsync(process, invocationId, start, collection, requests, responses, callToken);
        }
    }

    /// <summary>
    /// A reattachable command (docs/reattach.md): the tool runs under <see cref="SuperviseDetachedAsync"/>, which
    /// outlives this call; this call is only its first attachment.
    /// </summary>
    private async Task RunResumableAsync(
        ToolProcess process,
        string invocationId,
        StartCommand start,
        OutputCollection? collection,
        IAsyncStreamReader<ClientFrame> requests,
        IServerStreamWriter<ServerFrame> responses,
        CancellationToken callToken)
    {
        var journal = new OutputJournal(_reattach.ReattachMemoryBytes, _reattach.ReattachSpillBytes, _reattach.ResolveSpillDirectory());
        var command = new ResumableCommand(invocationId, _reattach.ReattachGrace, journal, resumable, time, logger);
        if (!resumable.TryAdd(command))
        {
            process.KillTree();
            process.Dispose();
            journal.Dispose();
            throw Reject(StatusCode.AlreadyExists, $"invocation {invocationId} is already running on this agent; send a new invocation_id for a new command.", "the client");
        }

        _ = SuperviseDetachedAsync(process, command, start, collection);
        await command.ServeAsync(
            () => new ServerFrame
            {
                Started = new CommandStarted
                {
                    InvocationId = invocationId,
                    Pid = process.Pid,
                    AgentId = _options.AgentId,
                    AttachToken = command.AttachToken,
                    ReattachGraceMillis = (long)command.Grace.TotalMilliseconds,
                },
            },
            0,
            0,
            requests,
            responses,
            callToken);
    }

    /// <summary>A call whose first frame is <c>attach</c>: resumes a reattachable command of this agent.</summary>
    private async Task AttachAsync(AttachCommand attach, IAsyncStreamReader<ClientFrame> requests, IServerStreamWriter<ServerFrame> responses, ServerCallContext context)
    {
        var command = resumable.Find(attach.InvocationId) ?? throw Reject(StatusCode.NotFound,
            $"agent {_options.AgentId} has no invocation {attach.InvocationId}: it ended, was never started here, or nobody reattached " +
            $"within the grace time ({_reattach.ReattachGrace.TotalSeconds:0.#} s) and it was stopped. Run the command again.", context.Peer);
        if (!command.Accepts(attach.AttachToken))
        {
            throw Reject(StatusCode.PermissionDenied,
                $"invocation {attach.InvocationId} belongs to another client: the attach token does not match. Only the jbazel that started a command can reattach to it.",
                context.Peer);
        }

        if (attach.StdoutOffset < 0 || attach.StderrOffset < 0)
        {
            throw Reject(StatusCode.InvalidArgument, "attach offsets must not be negative.", context.Peer);
        }

        Log.Reattached(logger, attach.InvocationId, context.Peer, attach.StdoutOffset, attach.StderrOffset);
        await command.ServeAsync(
            () => new ServerFrame
            {
                Attached = new CommandAttached
                {
                    InvocationId = attach.InvocationId,
                    StdoutOffset = attach.StdoutOffset,
                    StderrOffset = attach.StderrOffset,
                    StdinOffset = command.StdinReceived,
                    StdinClosed = command.StdinClosed,
                },
            },
            attach.StdoutOffset,
            attach.StderrOffset,
            requests,
            responses,
            context.CancellationToken);
    }

    /// <summary>
    /// Runs a reattachable command to its end whatever its calls do: output goes to its journal (never blocking the
    /// tool while nobody is attached), client frames come from whichever call is attached.
    /// </summary>
    private async Task SuperviseDetachedAsync(ToolProcess process, ResumableCommand command, StartCommand start, OutputCollection? collection)
    {
        var invocationId = command.InvocationId;
        try
        {
            using (process)
            {
                var startedAt = time.GetTimestamp();
                Log.CommandStarted(logger, invocationId, process.Pid, start.Args.Count, start.RelativeWorkingDirectory, process.Terminal is not null);
                using var interrupter = new Interrupter(process, _options.InterruptGracePeriod, _options.TerminateGracePeriod, time, logger);
                using var tracked = tracker.Begin(invocationId, () => interrupter.Interrupt(force: false, "agent stopping"));
                // The dashboard's view of it (Agent/Dashboard/): its output tail and, at the end, its exit code.
                using var watched = commandLog.Begin(invocationId, start.Args, process.Terminal is not null);
                var stdin = new ToolInput(process);
                command.Bind(reason => interrupter.Interrupt(force: false, reason), frame => HandleInputAsync(frame, process, stdin, interrupter, command));

                var frames = Channel.CreateBounded<OutgoingFrame>(new BoundedChannelOptions(FrameChannelCapacity)
                {
                    SingleReader = true,
                    SingleWriter = false,
                    FullMode = BoundedChannelFullMode.Wait,
                });
                var outputs = CreatePumps(process, frames.Writer, CancellationToken.None);

                using var disposeOutputs = new DisposeAll(outputs);
                var feeder = FeedJournalAsync(frames.Reader, command, interrupter, watched);
                var pumps = Task.WhenAll(outputs.Select(pump => pump.RunAsync(time)));
                var exit = await process.Exited;
                if (process.SignalGroup(Native.SIGKILL))
                {
                    Log.KilledLeftovers(logger, invocationId, process.Pid);
                }

                interrupter.Dispose();
                await DrainAsync(pumps, outputs, invocationId);
                frames.Writer.TryComplete();
                await feeder;
                tracked.Dispose();
                watched.Complete(exit.Code, exit.Signal);
                var elapsed = time.GetElapsedTime(startedAt);
                Log.CommandEnded(
                    logger,
                    invocationId,
                    process.Pid,
                    exit.Code,
                    exit.Signal,
                    elapsed,
                    outputs.Where(pump => pump.IsStdout).Sum(pump => pump.Bytes),
                    outputs.Where(pump => !pump.IsStdout).Sum(pump => pump.Bytes),
                    interrupter.WasInterrupted);
                metrics.CommandEnded(exit.Code, elapsed);
                audit.CommandEnded(invocationId, start.Args, exit.Code, exit.Signal, elapsed, interrupter.WasInterrupted);
                if (collection is not null)
                {
                    await collection.CompleteAsync(exit.Code);
                }

                command.Complete(new ExitStatus { Code = exit.Code, Signal = exit.Signal });
            }
        }
        catch (Exception ex)
        {
            Log.DetachedCommandFailed(logger, invocationId, ex);
            command.Complete(new ExitStatus { Code = 34 });
        }
    }

    /// <summary>Moves the pumps' frames into the journal, waiting only for an attached reader that is far behind.</summary>
    private async Task FeedJournalAsync(ChannelReader<OutgoingFrame> frames, ResumableCommand command, Interrupter interrupter, CommandLog.WatchedEntry watched)
    {
        var overflowed = false;
        await foreach (var frame in frames.ReadAllAsync())
        {
            try
            {
                await command.Journal.WaitForReaderAsync(ResumableCommand.ReaderWindow, CancellationToken.None);
                watched.Append(frame.Frame);
                var isStdout = frame.Frame.FrameCase == ServerFrame.FrameOneofCase.Stdout;
                var bytes = isStdout ? frame.Frame.Stdout : frame.Frame.Stderr;
                if (!command.Journal.Append(isStdout, bytes.Span) && command.Journal.Overflowed && !overflowed)
                {
                    overflowed = true;
                    Log.SpillLimitReached(logger, command.InvocationId, _reattach.ReattachSpillBytes);
                    interrupter.Interrupt(force: false, "output beyond the spill limit while the client is away");
                }
            }
            finally
            {
                frame.Written();
            }
        }
    }

    /// <summary>A client frame of the attached call other than start/attach/ack.</summary>
    private async Task HandleInputAsync(ClientFrame frame, ToolProcess process, ToolInput stdin, Interrupter interrupter, ResumableCommand command)
    {
        switch (frame.FrameCase)
        {
            case ClientFrame.FrameOneofCase.Stdin:
                // Counted whether or not the tool still reads, so a client that reattaches does not resend it.
                if (stdin.IsOpen && !await stdin.WriteAsync(frame.Stdin.Memory))
                {
                    Log.StdinClosedByTool(logger, process.Pid);
                }

                command.StdinReceived += frame.Stdin.Length;
                break;
            case ClientFrame.FrameOneofCase.StdinEof:
                command.StdinClosed = true;
                await stdin.CloseAsync();
                break;
            case ClientFrame.FrameOneofCase.Interrupt:
                interrupter.Interrupt(frame.Interrupt.Force, frame.Interrupt.Force ? "client forced interrupt" : "client interrupt");
                break;
            case ClientFrame.FrameOneofCase.Resize:
                Resize(process, frame.Resize);
                break;
            default:
                break;
        }
    }

    /// <summary>
    /// A pseudo-terminal when the client's stderr is a terminal, so the tool sees what it would see locally (bazel:
    /// colour, curses progress, the terminal's width); stdout and stdin are on it only when the client's are terminals
    /// too, so a redirected stdout stays a separate, byte-exact pipe.
    /// </summary>
    internal static ToolTerminal? TerminalFor(TerminalInfo? terminal) =>
        terminal is { StderrIsTty: true }
            ? new ToolTerminal(Math.Max(terminal.Columns, 0), Math.Max(terminal.Rows, 0), terminal.StdinIsTty, terminal.StdoutIsTty)
            : null;

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
        Log.CommandStarted(logger, invocationId, process.Pid, start.Args.Count, start.RelativeWorkingDirectory, process.Terminal is not null);

        using var interrupter = new Interrupter(process, _options.InterruptGracePeriod, _options.TerminateGracePeriod, time, logger);
        using var command = tracker.Begin(invocationId, () => interrupter.Interrupt(force: false, "agent stopping"));
        // The dashboard's view of it (Agent/Dashboard/): its output tail and, at the end, its exit code.
        using var watched = commandLog.Begin(invocationId, start.Args, process.Terminal is not null);
        using var delivery = CancellationTokenSource.CreateLinkedTokenSource(callToken);
        using var readerStop = CancellationTokenSource.CreateLinkedTokenSource(callToken);
        // A client that goes away (cancel, disconnect, deadline) counts as Ctrl-C.
        using var onCallCancelled = callToken.Register(() => interrupter.Interrupt(force: false, "client went away"));

        var frames = Channel.CreateBounded<OutgoingFrame>(new BoundedChannelOptions(FrameChannelCapacity)
        {
            SingleReader = true,
            SingleWriter = false,
            FullMode = BoundedChannelFullMode.Wait,
        });
        frames.Writer.TryWrite(new OutgoingFrame(new ServerFrame
        {
            Started = new CommandStarted { InvocationId = invocationId, Pid = process.Pid, AgentId = _options.AgentId },
        }));

        var writer = WriteFramesAsync(frames.Reader, responses, delivery, interrupter, watched);
        var outputs = CreatePumps(process, frames.Writer, delivery.Token);

        using var disposeOutputs = new DisposeAll(outputs);
        var pumps = Task.WhenAll(outputs.Select(pump => pump.RunAsync(time)));
        var violation = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var reader = ReadClientFramesAsync(requests, process, interrupter, violation, readerStop.Token);

        var exit = await process.Exited;

        // Whatever is left in the tool's process group is an orphan of this command (bazel's server is not: it
        // daemonizes into its own session).
        if (process.SignalGroup(Native.SIGKILL))
        {
            Log.KilledLeftovers(logger, invocationId, process.Pid);
        }

        interrupter.Dispose();
        await DrainAsync(pumps, outputs, invocationId);
        frames.Writer.TryComplete();
        await writer;

        command.Dispose();
        watched.Complete(exit.Code, exit.Signal);
        var elapsed = time.GetElapsedTime(startedAt);
        Log.CommandEnded(
            logger,
            invocationId,
            process.Pid,
            exit.Code,
            exit.Signal,
            elapsed,
            outputs.Where(pump => pump.IsStdout).Sum(pump => pump.Bytes),
            outputs.Where(pump => !pump.IsStdout).Sum(pump => pump.Bytes),
            interrupter.WasInterrupted);
        metrics.CommandEnded(exit.Code, elapsed);
        audit.CommandEnded(invocationId, start.Args, exit.Code, exit.Signal, elapsed, interrupter.WasInterrupted);

        if (collection is not null)
        {
            // Before the exit frame, so a client's ListOutputs right after it finds this build's outputs.
            await collection.CompleteAsync(exit.Code);
        }

        if (violation.Task.IsCompleted)
        {
            // The client broke the protocol: the call ends with its status instead of an exit frame.
            readerStop.Cancel();
            await reader;
            throw Reject(StatusCode.InvalidArgument, $"{violation.Task.Result} The command (invocation {invocationId}) was interrupted " +
                $"and ended with exit code {exit.Code}; its output up to then was delivered.", "the client");
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

    private async Task<ClientFrame> ReadFirstAsync(IAsyncStreamReader<ClientFrame> requests, string peer, CancellationToken cancellationToken)
    {
        if (!await requests.MoveNext(cancellationToken))
        {
            throw Reject(StatusCode.InvalidArgument, "the request stream ended before any frame; the first ClientFrame must be 'start'.", peer);
        }

        var first = requests.Current;
        if (first.FrameCase is not (ClientFrame.FrameOneofCase.Start or ClientFrame.FrameOneofCase.Attach))
        {
            throw Reject(
                StatusCode.InvalidArgument,
                $"the first ClientFrame must be 'start' (args, working directory, env) or 'attach', but it was '{first.FrameCase}'.",
                peer);
        }

        return first;
    }

    /// <summary>The only writer of the response stream (gRPC forbids concurrent writes).</summary>
    private async Task WriteFramesAsync(
        ChannelReader<OutgoingFrame> frames,
        IServerStreamWriter<ServerFrame> responses,
        CancellationTokenSource delivery,
        Interrupter interrupter,
        CommandLog.WatchedEntry watched)
    {
        try
        {
            await foreach (var frame in frames.ReadAllAsync(delivery.Token))
            {
                try
                {
                    watched.Append(frame.Frame);
                    await responses.WriteAsync(frame.Frame, delivery.Token);
                }
                finally
                {
                    // The message is serialized (copied into the response stream) once the write has completed.
                    frame.Written();
                }
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
        TaskCompletionSource<string> violation,
        CancellationToken cancellationToken)
    {
        var stdin = new ToolInput(process);
        try
        {
            while (await requests.MoveNext(cancellationToken))
            {
                var frame = requests.Current;
                switch (frame.FrameCase)
                {
                    case ClientFrame.FrameOneofCase.Stdin when stdin.IsOpen:
                        if (!await stdin.WriteAsync(frame.Stdin.Memory))
                        {
                            Log.StdinClosedByTool(logger, process.Pid);
                        }

                        break;
                    case ClientFrame.FrameOneofCase.StdinEof when stdin.IsOpen:
                        await stdin.CloseAsync();
                        break;
                    case ClientFrame.FrameOneofCase.Interrupt:
                        interrupter.Interrupt(frame.Interrupt.Force, frame.Interrupt.Force ? "client forced interrupt" : "client interrupt");
                        break;
                    case ClientFrame.FrameOneofCase.Resize:
                        Resize(process, frame.Resize);
                        break;
                    case ClientFrame.FrameOneofCase.Start:
                        // One command per call: a client that sends another start is confused about the stream's
                        // state, so nothing more it sends is trusted. Its command is stopped as if by Ctrl-C (never
                        // left running unsupervised, never replaced) and the call ends with InvalidArgument.
                        Log.DuplicateStart(logger, process.Pid);
                        violation.TrySetResult("a second 'start' frame arrived on a running ExecuteCommand call; send one 'start' per call.");
                        interrupter.Interrupt(force: false, "protocol violation: second start frame");
                        if (stdin.IsOpen)
                        {
                            await stdin.CloseAsync();
                        }

                        return;
                    default:
                        break;
                }
            }

            // Half-close: the client will send nothing more, so the tool's stdin ends too (like `bazel < /dev/null`).
            // It is not an interrupt; the command runs on and its output still flows.
            if (stdin.IsOpen)
            {
                await stdin.CloseAsync();
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

    /// <summary>A resize frame: the new window size of the client's terminal. Pipes have no size; nonsense sizes are ignored.</summary>
    private void Resize(ToolProcess process, Rbs.V1.Resize resize)
    {
        if (process.Terminal is not { } terminal || process.HasExited)
        {
            return;
        }

        if (resize.Columns <= 0 || resize.Rows <= 0 || !terminal.Resize(resize.Columns, resize.Rows))
        {
            Log.IgnoredResize(logger, process.Pid, resize.Columns, resize.Rows);
        }
    }

    private async Task DrainAsync(Task pumps, IReadOnlyList<OutputPump> pipePumps, string invocationId)
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

    /// <summary>Disposes the pumps at the end of the command, however it ends.</summary>
    private sealed class DisposeAll(IEnumerable<IDisposable> items) : IDisposable
    {
        public void Dispose()
        {
            foreach (var item in items)
            {
                item.Dispose();
            }
        }
    }

    private RpcException Reject(StatusCode code, string message, string peer)
    {
        Log.Rejected(logger, peer, code, message);
        return new RpcException(new Status(code, message));
    }

    /// <summary>One output pump per stream the tool has: its stdout and stderr pipes, or its pseudo-terminal.</summary>
    private static List<OutputPump> CreatePumps(ToolProcess process, ChannelWriter<OutgoingFrame> frames, CancellationToken delivery)
    {
        var outputs = new List<OutputPump>(3);
        if (process.StandardOutput is { } stdoutPipe)
        {
            outputs.Add(new OutputPump(stdoutPipe.SafePipeHandle, isStdout: true, frames, delivery));
        }

        if (process.StandardError is { } stderrPipe)
        {
            outputs.Add(new OutputPump(stderrPipe.SafePipeHandle, isStdout: false, frames, delivery));
        }

        if (process.Terminal is { } terminal)
        {
            outputs.Add(new OutputPump(terminal, frames, delivery));
        }

        return outputs;
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 100, Level = LogLevel.Information, Message = "Command {InvocationId} started: pid {Pid}, {ArgCount} args, in '{RelativeWorkingDirectory}', on a terminal: {OnTerminal}")]
        public static partial void CommandStarted(ILogger logger, string invocationId, int pid, int argCount, string relativeWorkingDirectory, bool onTerminal);

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

        [LoggerMessage(EventId = 106, Level = LogLevel.Warning, Message = "A second 'start' frame arrived for the command of tool pid {Pid}: interrupting it and ending the call with InvalidArgument")]
        public static partial void DuplicateStart(ILogger logger, int pid);

        [LoggerMessage(EventId = 107, Level = LogLevel.Debug, Message = "Command {InvocationId}: SIGKILLed what was left in tool pid {Pid}'s process group after it exited")]
        public static partial void KilledLeftovers(ILogger logger, string invocationId, int pid);

        [LoggerMessage(EventId = 108, Level = LogLevel.Warning, Message = "Command {InvocationId}: an escaped descendant kept an output pipe open for {Timeout} after the tool exited; stopped reading it")]
        public static partial void PipeHeldOpen(ILogger logger, string invocationId, TimeSpan timeout);

        [LoggerMessage(EventId = 110, Level = LogLevel.Warning, Message = "Reading client frames for tool pid {Pid} failed; no more stdin or interrupts from this client")]
        public static partial void RequestStreamFailed(ILogger logger, int pid, Exception exception);

        [LoggerMessage(EventId = 109, Level = LogLevel.Information, Message = "Command {InvocationId}: the client was gone before the exit frame")]
        public static partial void ClientGoneBeforeExit(ILogger logger, string invocationId);

        [LoggerMessage(EventId = 144, Level = LogLevel.Information, Message = "Command {InvocationId}: reattached from {Peer} at stdout byte {StdoutOffset}, stderr byte {StderrOffset}")]
        public static partial void Reattached(ILogger logger, string invocationId, string peer, long stdoutOffset, long stderrOffset);

        [LoggerMessage(EventId = 145, Level = LogLevel.Warning, Message = "Command {InvocationId}: its client is away and its output passed the spill limit of {Limit} bytes; stopping it")]
        public static partial void SpillLimitReached(ILogger logger, string invocationId, long limit);

        [LoggerMessage(EventId = 146, Level = LogLevel.Error, Message = "Command {InvocationId}: supervising the reattachable command failed")]
        public static partial void DetachedCommandFailed(ILogger logger, string invocationId, Exception exception);

        [LoggerMessage(EventId = 130, Level = LogLevel.Debug, Message = "Ignored a resize to {Columns}x{Rows} for tool pid {Pid} (no terminal, or not a window size)")]
        public static partial void IgnoredResize(ILogger logger, int pid, int columns, int rows);

        [LoggerMessage(EventId = 148, Level = LogLevel.Information, Message = "Start from {Peer} names a tree the workspace does not hold ({Reason}); the client syncs and starts again")]
        public static partial void TreeOutdated(ILogger logger, string peer, string reason);
    }
}
