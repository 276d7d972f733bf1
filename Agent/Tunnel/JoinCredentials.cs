namespace Rbs.Agent.Tunnel;

/// <summary>
/// The agent's join token: the one place it is held, in memory. The orchestrator's token is read once at start-up
/// (a file is deleted right after: a credential must not outlive its use on disk) and replaced by the renewed token
/// the gateway returns on every connect. <see cref="RenewDue"/> says when the current token has used up half its
/// lifetime; the tunnel listener then rotates an idle spare to pick up a fresh one, so an idle agent's credentials
/// never lapse.
/// </summary>
internal sealed partial class JoinCredentials
{
    /// <summary>Assumed lifetime of a renewed token whose gateway does not announce one (an older gateway).</summary>
    internal static readonly TimeSpan UnannouncedLifetime = TimeSpan.FromMinutes(10);

    private readonly TimeProvider _timeProvider;
    private readonly Lock _lock = new();
    private string _token;
    private DateTimeOffset? _renewDue;
    private int _renewals;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal JoinCredentials(string token, TimeProvider timeProvider)
    {
        _token = token;
        _timeProvider = timeProvider;
    }

    /// <summary>
    /// The configured token: <see cref="AgentTunnelOptions.JoinTokenFile"/> (read once, then deleted; emptied when the
    /// directory does not allow deleting) or <see cref="AgentTunnelOptions.JoinToken"/> (flag or environment, e.g. a
    /// pod's Secret).
    /// </summary>
    public static JoinCredentials Load(AgentTunnelOptions options, TimeProvider timeProvider, ILogger logger)
    {
        if (string.IsNullOrWhiteSpace(options.JoinTokenFile))
        {
            return new JoinCredentials(options.JoinToken?.Trim() ?? string.Empty, timeProvider);
        }

        var path = options.JoinTokenFile;
        var token = File.ReadAllText(path).Trim();
        RemoveFromDisk(path, logger);
        return new JoinCredentials(token, timeProvider);
    }

    /// <summary>The token for the next dial.</summary>
    public string Token
    {
        get
        {
            lock (_lock)
            {
                return _token;
            }
        }
    }

    /// <summary>When the current token should be replaced; null until the gateway has issued one (the first connect).</summary>
    public DateTimeOffset? RenewDue
    {
        get
        {
            lock (_lock)
            {
                return _renewDue;
            }
        }
    }

    /// <summary>Tokens received from the gateway so far.</summary>
    public int Renewals => Volatile.Read(ref _renewals);

    /// <summary>Completes at the next <see cref="Renewed"/>.</summary>
    public Task Changed
    {
        get
        {
            lock (_lock)
            {
                return _changed.Task;
            }
        }
    }

    /// <summary>The gateway returned a fresh token; <paramref name="lifetime"/> as it announced it (null: not announced).</summary>
    public void Renewed(string token, TimeSpan? lifetime)
    {
        TaskCompletionSource changed;
        lock (_lock)
        {
            _token = token;
            // Half the lifetime: the other half is the margin for a rotation that has to wait out a failed dial.
            _renewDue = _timeProvider.GetUtcNow() + ((lifetime ?? UnannouncedLifetime) / 2);
            _renewals++;
            changed = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        changed.TrySetResult();
    }

    private static void RemoveFromDisk(string path, ILogger logger)
    {
        try
        {
            File.Delete(path);
            Log.FileDeleted(logger, path);
            return;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The directory may not be ours to change (a file handed over by a spawner that keeps the directory);
            // the file itself may still be: leave no readable token behind.
            try
            {
                File.WriteAllText(path, string.Empty);
                Log.FileEmptied(logger, path, e.Message);
            }
            catch (Exception inner) when (inner is IOException or UnauthorizedAccessException)
            {
                Log.FileKept(logger, path, inner.Message);
            }
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 306, Level = LogLevel.Debug, Message = "Read the join token from {Path} and deleted the file; it is held in memory only")]
        public static partial void FileDeleted(ILogger logger, string path);

        [LoggerMessage(EventId = 307, Level = LogLevel.Warning, Message = "Read the join token from {Path}; could not delete the file ({Reason}), emptied it instead")]
        public static partial void FileEmptied(ILogger logger, string path, string reason);

        [LoggerMessage(EventId = 308, Level = LogLevel.Warning, Message = "Read the join token from {Path} but could neither delete nor empty the file ({Reason}): the token stays on disk until its owner removes it")]
        public static partial void FileKept(ILogger logger, string path, string reason);
    }
}
