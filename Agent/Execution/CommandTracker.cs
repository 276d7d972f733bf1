using System.Collections.Concurrent;

namespace Rbs.Agent.Execution;

/// <summary>
/// The agent's running commands and last activity: feeds GetStatus, idle exit, and graceful shutdown
/// (which interrupts every running command and waits for them).
/// </summary>
internal sealed class CommandTracker
{
    private readonly ConcurrentDictionary<long, RunningCommand> _running = new();
    private readonly TimeProvider _time;
    private readonly object _idleLock = new();
    private TaskCompletionSource _idle = NewCompleted();
    private long _nextId;
    private long _lastActivityUnixMillis;
    private volatile bool _stopping;

    public CommandTracker(TimeProvider time)
    {
        _time = time;
        StartedAt = time.GetUtcNow();
        _lastActivityUnixMillis = StartedAt.ToUnixTimeMilliseconds();
    }

    public DateTimeOffset StartedAt { get; }

    public int RunningCount => _running.Count;

    /// <summary>When a command last started or ended (the agent's start time before the first command).</summary>
    public DateTimeOffset LastActivity => DateTimeOffset.FromUnixTimeMilliseconds(Interlocked.Read(ref _lastActivityUnixMillis));

    /// <summary>Set once the agent is shutting down; new commands are refused.</summary>
    public bool IsStopping => _stopping;

    /// <summary>Registers a command; dispose the result when it has ended.</summary>
    /// <param name="invocationId">For logs.</param>
    /// <param name="interrupt">Called when the agent stops while the command runs.</param>
    public RunningCommand Begin(string invocationId, Action interrupt)
    {
        var command = new RunningCommand(this, Interlocked.Increment(ref _nextId), invocationId, interrupt);
        lock (_idleLock)
        {
            if (_running.IsEmpty)
            {
                _idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            _running[command.Id] = command;
        }

        Touch();
        if (_stopping)
        {
            // Raced with shutdown: interrupt it like the others.
            interrupt();
        }

        return command;
    }

    /// <summary>Refuses new commands and interrupts the running ones.</summary>
    /// <returns>How many commands were interrupted.</returns>
    public int InterruptAll()
    {
        _stopping = true;
        var commands = _running.Values.ToArray();
        foreach (var command in commands)
        {
            command.Interrupt();
        }

        return commands.Length;
    }

    /// <summary>Completes when no command is running.</summary>
    public Task WhenIdleAsync(CancellationToken cancellationToken)
    {
        lock (_idleLock)
        {
            return _idle.Task.WaitAsync(cancellationToken);
        }
    }

    private void End(RunningCommand command)
    {
        lock (_idleLock)
        {
            if (_running.TryRemove(command.Id, out _) && _running.IsEmpty)
            {
                _idle.TrySetResult();
            }
        }

        Touch();
    }

    private void Touch() => Interlocked.Exchange(ref _lastActivityUnixMillis, _time.GetUtcNow().ToUnixTimeMilliseconds());

    private static TaskCompletionSource NewCompleted()
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        tcs.SetResult();
        return tcs;
    }

    internal sealed class RunningCommand(CommandTracker tracker, long id, string invocationId, Action interrupt) : IDisposable
    {
        private int _disposed;

        public long Id { get; } = id;

        public string InvocationId { get; } = invocationId;

        public void Interrupt() => interrupt();

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                tracker.End(this);
            }
        }
    }
}
