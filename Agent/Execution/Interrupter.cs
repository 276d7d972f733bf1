namespace Rbs.Agent.Execution;

/// <summary>
/// Ctrl-C semantics for one command: SIGINT to the tool's process group (bazel then stops cleanly and exits 8);
/// if it is still running after the grace period, SIGTERM; if still running after that, SIGKILL of the whole tree.
/// A forced interrupt (second Ctrl-C) kills at once.
/// </summary>
internal sealed partial class Interrupter(
    ToolProcess process,
    TimeSpan gracePeriod,
    TimeSpan terminateGracePeriod,
    TimeProvider time,
    ILogger logger) : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private int _escalating;
    private int _disposed;

    public bool WasInterrupted { get; private set; }

    /// <param name="force">Kill now instead of SIGINT + grace period.</param>
    /// <param name="reason">For the log: "client interrupt", "client went away", "agent stopping".</param>
    public void Interrupt(bool force, string reason)
    {
        if (process.HasExited || Volatile.Read(ref _disposed) != 0)
        {
            return;
        }

        WasInterrupted = true;
        if (force)
        {
            var killed = process.KillTree();
            Log.ForceKilled(logger, process.Pid, reason, killed);
            return;
        }

        process.SignalGroup(Native.SIGINT);
        Log.SentSigint(logger, process.Pid, reason, gracePeriod);
        if (Interlocked.Exchange(ref _escalating, 1) == 0)
        {
            _ = EscalateAsync();
        }
    }

    /// <summary>Stops a pending escalation (the tool has exited).</summary>
    public void Dispose()
    {
        // Cancel only, never dispose the source: Interrupt can race with this (the tool exits the moment it gets
        // SIGINT) and must still be able to read the token. A source without timers holds no unmanaged resources.
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _stop.Cancel();
        }
    }

    private async Task EscalateAsync()
    {
        var cancellationToken = _stop.Token;
        try
        {
            await Task.Delay(gracePeriod, time, cancellationToken);
            if (process.HasExited)
            {
                return;
            }

            Log.EscalatingToSigterm(logger, process.Pid, gracePeriod, terminateGracePeriod);
            process.SignalGroup(Native.SIGTERM);

            await Task.Delay(terminateGracePeriod, time, cancellationToken);
            if (process.HasExited)
            {
                return;
            }

            var killed = process.KillTree();
            Log.EscalatingToSigkill(logger, process.Pid, killed);
        }
        catch (OperationCanceledException)
        {
            // The command ended; nothing left to escalate.
        }
        catch (ObjectDisposedException)
        {
            // Disposed between the delay and the check; the command ended.
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 200, Level = LogLevel.Information, Message = "Interrupted tool pid {Pid} ({Reason}): SIGINT sent to its process group; SIGTERM after {GracePeriod}")]
        public static partial void SentSigint(ILogger logger, int pid, string reason, TimeSpan gracePeriod);

        [LoggerMessage(EventId = 201, Level = LogLevel.Warning, Message = "Tool pid {Pid} still running {GracePeriod} after SIGINT: sending SIGTERM; SIGKILL after {TerminateGracePeriod}")]
        public static partial void EscalatingToSigterm(ILogger logger, int pid, TimeSpan gracePeriod, TimeSpan terminateGracePeriod);

        [LoggerMessage(EventId = 202, Level = LogLevel.Warning, Message = "Tool pid {Pid} survived SIGTERM: killed its process tree with SIGKILL ({Count} signalled)")]
        public static partial void EscalatingToSigkill(ILogger logger, int pid, int count);

        [LoggerMessage(EventId = 203, Level = LogLevel.Warning, Message = "Forced interrupt of tool pid {Pid} ({Reason}): killed its process tree with SIGKILL ({Count} signalled)")]
        public static partial void ForceKilled(ILogger logger, int pid, string reason, int count);
    }
}
