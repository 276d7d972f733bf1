using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Rbs.V1;

namespace Rbs.Agent.Execution.Reattach;

/// <summary>
/// The reattachable commands of this agent by invocation id, while they run or wait for their client
/// (docs/reattach.md).
/// </summary>
internal sealed class ResumableCommands : IDisposable
{
    private readonly ConcurrentDictionary<string, ResumableCommand> _commands = new(StringComparer.Ordinal);

    /// <summary>The agent is stopping (its running commands were interrupted and awaited): output nobody fetched goes.</summary>
    public void Dispose()
    {
        foreach (var command in _commands.Values)
        {
            command.Forget();
        }

        _commands.Clear();
    }

    public bool TryAdd(ResumableCommand command) => _commands.TryAdd(command.InvocationId, command);

    public ResumableCommand? Find(string invocationId) => _commands.TryGetValue(invocationId, out var command) ? command : null;

    public void Remove(ResumableCommand command) => _commands.TryRemove(new KeyValuePair<string, ResumableCommand>(command.InvocationId, command));

    public int Count => _commands.Count;
}

/// <summary>
/// A command that outlives its calls: its output goes to an <see cref="OutputJournal"/> whatever the client does, and
/// at most one call at a time (the first, then each <c>attach</c>) is attached to it. When the attached call ends
/// before the exit status was written, the command waits <see cref="ReattachOptions.ReattachGrace"/> for another
/// attach; then it is interrupted and forgotten.
/// </summary>
internal sealed partial class ResumableCommand(
    string invocationId,
    TimeSpan grace,
    OutputJournal journal,
    ResumableCommands registry,
    TimeProvider time,
    ILogger logger)
{
    /// <summary>An attached reader this far behind stops the feeder (and so, through the pipes, the tool): 1 MiB.</summary>
    internal const long ReaderWindow = 1024 * 1024;

    private readonly object _lock = new();
    private readonly TaskCompletionSource<ExitStatus> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Attachment? _attachment;
    private ITimer? _graceTimer;
    private bool _delivered;
    private bool _expired;
    private bool _ended;
    private Action<string>? _interrupt;
    private Func<ClientFrame, Task>? _input;

    public string InvocationId { get; } = invocationId;

    /// <summary>The secret only the client that started the command has (sent in its started frame).</summary>
    public string AttachToken { get; } = Convert.ToBase64String(RandomNumberGenerator.GetBytes(32));

    public TimeSpan Grace { get; } = grace;

    public OutputJournal Journal { get; } = journal;

    /// <summary>Bytes of stdin received so far (an attach tells the client, which resends the rest).</summary>
    public long StdinReceived { get; set; }

    public bool StdinClosed { get; set; }

    /// <summary>Wires the running tool: how to interrupt it, and where the client's frames go.</summary>
    public void Bind(Action<string> interrupt, Func<ClientFrame, Task> input)
    {
        _interrupt = interrupt;
        _input = input;
    }

    public bool Accepts(string token) =>
        CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(token), Encoding.UTF8.GetBytes(AttachToken));

    /// <summary>The tool has ended and all its output is in the journal.</summary>
    public void Complete(ExitStatus exit)
    {
        _exit.TrySetResult(exit);
        lock (_lock)
        {
            _ended = true;
            ForgetIfDone();
        }
    }

    /// <summary>
    /// Serves one call: takes the command over from any call still attached, writes <paramref name="first"/>, then the
    /// output after the offsets and the exit status, while the call's frames reach the tool. Returns when the exit
    /// status is written or the call is gone (then the grace time starts).
    /// </summary>
    public async Task ServeAsync(
        Func<ServerFrame> first,
        long stdoutOffset,
        long stderrOffset,
        IAsyncStreamReader<ClientFrame> requests,
        IServerStreamWriter<ServerFrame> responses,
        CancellationToken callToken)
    {
        var attachment = new Attachment(CancellationTokenSource.CreateLinkedTokenSource(callToken));
        Attachment? previous;
        lock (_lock)
        {
            if (_expired)
            {
                throw Expired();
            }

            previous = _attachment;
            _attachment = attachment;
            _graceTimer?.Dispose();
            _graceTimer = null;
        }

        try
        {
            if (previous is not null)
            {
                // A new attach wins: the old call may be half-dead (its connection not yet known to be gone).
                Log.TakingOver(logger, InvocationId);
                await previous.Cancel.CancelAsync();
                await previous.Ended.Task.WaitAsync(callToken);
            }

            if (Journal.Overflowed)
            {
                throw Overflowed();
            }

            var cursor = Journal.BeginRead(stdoutOffset, stderrOffset) ?? throw new RpcException(new Status(StatusCode.FailedPrecondition,
                $"invocation {InvocationId} cannot resume at stdout byte {stdoutOffset}, stderr byte {stderrOffset}: the agent has stdout up to {Journal.StdoutEnd} and stderr up to {Journal.StderrEnd}, and forgets what the client acknowledged."));
            try
            {
                await ServeAttachedAsync(attachment, cursor, first(), requests, responses);
            }
            finally
            {
                Journal.EndRead(cursor);
            }
        }
        finally
        {
            Detach(attachment);
        }
    }

    private async Task ServeAttachedAsync(
        Attachment attachment,
        OutputJournal.Cursor cursor,
        ServerFrame first,
        IAsyncStreamReader<ClientFrame> requests,
        IServerStreamWriter<ServerFrame> responses)
    {
        var token = attachment.Cancel.Token;
        var violation = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var confirmed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var reader = ReadClientFramesAsync(requests, violation, confirmed, token);
        try
        {
            await responses.WriteAsync(first, token);
            while (!violation.Task.IsCompleted)
            {
                if (Journal.TryRead(cursor, out var stdout, out var bytes, out var changed))
                {
                    var data = Google.Protobuf.UnsafeByteOperations.UnsafeWrap(bytes);
                    await responses.WriteAsync(stdout ? new ServerFrame { Stdout = data } : new ServerFrame { Stderr = data }, token);
                    Journal.Sent(cursor);
                    continue;
                }

                if (Journal.Overflowed)
                {
                    // Output was dropped after what was just sent: never an exit status as if it were complete.
                    throw Overflowed();
                }

                if (_exit.Task.IsCompleted)
                {
                    await responses.WriteAsync(new ServerFrame { Exit = _exit.Task.Result }, token);

                    // Written is not received: the output is kept until the client confirms it has everything (an
                    // ack of all of it, or ending its request stream after the exit). A call lost before that
                    // leaves the command waiting for a reattach, as for a call lost earlier.
                    await Task.WhenAny(confirmed.Task, reader).WaitAsync(token);
                    if (confirmed.Task.IsCompleted)
                    {
                        lock (_lock)
                        {
                            _delivered = true;
                        }
                    }
                    else
                    {
                        Log.CallLost(logger, InvocationId, Grace, "no confirmation of the exit status");
                    }

                    return;
                }

                await Task.WhenAny(changed, _exit.Task, violation.Task).WaitAsync(token);
            }

            throw new RpcException(new Status(StatusCode.InvalidArgument, $"{violation.Task.Result} The command (invocation {InvocationId}) was interrupted."));
        }
        catch (Exception ex) when (ex is OperationCanceledException or InvalidOperationException or IOException)
        {
            Log.CallLost(logger, InvocationId, Grace, ex.GetType().Name);
        }
        finally
        {
            await attachment.Cancel.CancelAsync();
            await reader;
        }
    }

    private async Task ReadClientFramesAsync(
        IAsyncStreamReader<ClientFrame> requests,
        TaskCompletionSource<string> violation,
        TaskCompletionSource confirmed,
        CancellationToken cancellationToken)
    {
        try
        {
            while (await requests.MoveNext(cancellationToken))
            {
                var frame = requests.Current;
                switch (frame.FrameCase)
                {
                    case ClientFrame.FrameOneofCase.Ack:
                        Journal.Acknowledge(frame.Ack.StdoutOffset, frame.Ack.StderrOffset);
                        if (_exit.Task.IsCompleted && frame.Ack.StdoutOffset >= Journal.StdoutEnd && frame.Ack.StderrOffset >= Journal.StderrEnd)
                        {
                            confirmed.TrySetResult();
                        }

                        break;
                    case ClientFrame.FrameOneofCase.Start or ClientFrame.FrameOneofCase.Attach:
                        violation.TrySetResult($"a second '{frame.FrameCase}' frame arrived on a running ExecuteCommand call; send one per call.");
                        _interrupt?.Invoke("protocol violation: second start frame");
                        return;
                    default:
                        if (_input is { } input)
                        {
                            await input(frame);
                        }

                        break;
                }
            }

            // Half-close: the client will send nothing more, so the tool's stdin ends (like `bazel < /dev/null`);
            // after the exit status, it is the client's confirmation that it has it.
            if (_exit.Task.IsCompleted)
            {
                confirmed.TrySetResult();
            }

            if (_input is { } close)
            {
                await close(new ClientFrame { StdinEof = new StdinEof() });
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException or InvalidOperationException)
        {
            // The call ended or the client went away.
        }
        catch (Exception ex)
        {
            Log.RequestStreamFailed(logger, InvocationId, ex);
        }
    }

    private void Detach(Attachment attachment)
    {
        lock (_lock)
        {
            if (ReferenceEquals(_attachment, attachment))
            {
                _attachment = null;
                if (!_delivered && !_expired)
                {
                    _graceTimer?.Dispose();
                    _graceTimer = time.CreateTimer(_ => OnGraceExpired(), null, Grace, Timeout.InfiniteTimeSpan);
                }

                ForgetIfDone();
            }
        }

        attachment.Ended.TrySetResult();
        attachment.Cancel.Dispose();
    }

    /// <summary>The agent is stopping: no more grace timer, and the journal (with its spill file) goes.</summary>
    public void Forget()
    {
        lock (_lock)
        {
            _expired = true;
            _graceTimer?.Dispose();
            _graceTimer = null;
        }

        Journal.Dispose();
    }

    private void OnGraceExpired()
    {
        try
        {
            ExpireGrace();
        }
        catch (Exception ex)
        {
            // A timer callback must never throw (it would end the process).
            Log.GraceExpiryFailed(logger, InvocationId, ex);
        }
    }

    private void ExpireGrace()
    {
        lock (_lock)
        {
            if (_attachment is not null || _delivered || _expired)
            {
                return;
            }

            _expired = true;
            _graceTimer?.Dispose();
            _graceTimer = null;
            registry.Remove(this);
            ForgetIfDone();
        }

        Log.GraceExpired(logger, InvocationId, Grace);
        _interrupt?.Invoke("nobody reattached within the grace time");
    }

    /// <summary>Under the lock: once the tool has ended and its exit is delivered (or nobody came), the output goes.</summary>
    private void ForgetIfDone()
    {
        if (_ended && (_delivered || _expired) && _attachment is null)
        {
            registry.Remove(this);
            Journal.Dispose();
        }
    }

    private RpcException Overflowed() => new(new Status(StatusCode.FailedPrecondition,
        $"invocation {InvocationId} wrote more output than the agent keeps for a client that is away or does not keep up " +
        "(Agent:Execution:ReattachSpillBytes); it was stopped and its output is incomplete. Run the command again."));

    private RpcException Expired() => new(new Status(StatusCode.NotFound,
        $"invocation {InvocationId} is gone: nobody reattached within {Grace.TotalSeconds:0.#} s, so the agent stopped it. Run the command again."));

    private sealed class Attachment(CancellationTokenSource cancel)
    {
        public CancellationTokenSource Cancel { get; } = cancel;

        public TaskCompletionSource Ended { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 140, Level = LogLevel.Information, Message = "Command {InvocationId}: its call was lost ({Reason}); it keeps running for {Grace}, waiting for the client to reattach")]
        public static partial void CallLost(ILogger logger, string invocationId, TimeSpan grace, string reason);

        [LoggerMessage(EventId = 141, Level = LogLevel.Information, Message = "Command {InvocationId}: a new attach takes over from the call still attached")]
        public static partial void TakingOver(ILogger logger, string invocationId);

        [LoggerMessage(EventId = 142, Level = LogLevel.Warning, Message = "Command {InvocationId}: nobody reattached within {Grace}; stopping it")]
        public static partial void GraceExpired(ILogger logger, string invocationId, TimeSpan grace);

        [LoggerMessage(EventId = 147, Level = LogLevel.Error, Message = "Command {InvocationId}: stopping it after its grace time failed")]
        public static partial void GraceExpiryFailed(ILogger logger, string invocationId, Exception exception);

        [LoggerMessage(EventId = 143, Level = LogLevel.Warning, Message = "Reading client frames of command {InvocationId} failed")]
        public static partial void RequestStreamFailed(ILogger logger, string invocationId, Exception exception);
    }
}
