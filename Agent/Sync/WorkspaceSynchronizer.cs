using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Agent.Execution;
using Rbs.Agent.Hosting;
using Rbs.V1;

namespace Rbs.Agent.Sync;

/// <summary>
/// The agent's one workspace as a sync target: its state directory, the lock that serializes syncs, the apply
/// journal's recovery and the filesystem's case sensitivity.
/// </summary>
internal sealed partial class WorkspaceSynchronizer : IDisposable
{
    private readonly SemaphoreSlim _lock = new(1, 1);
    private readonly ILogger<WorkspaceSynchronizer> _logger;
    private readonly SyncCaseSensitivity _caseMode;
    private bool? _caseInsensitive;

    public WorkspaceSynchronizer(IOptions<AgentOptions> agent, IOptions<WorkspaceSyncOptions> options, ILogger<WorkspaceSynchronizer> logger)
    {
        _logger = logger;
        _caseMode = options.Value.CaseSensitivity;
        Workspace = Native.RealPath(agent.Value.Workspace) ?? Path.GetFullPath(agent.Value.Workspace);
        Store = new SyncStateStore(ChooseStateDirectory(options.Value, agent.Value.Workspace));
        Applier = new SyncApplier(Workspace, Store);
    }

    /// <summary>The workspace root, symlinks resolved.</summary>
    public string Workspace { get; }

    public SyncStateStore Store { get; }

    public SyncApplier Applier { get; }

    /// <summary>Waits for any other sync (or recovery) of this workspace to finish; dispose the result to release.</summary>
    public async Task<IDisposable> AcquireAsync(CancellationToken cancellationToken)
    {
        if (!_lock.Wait(0, CancellationToken.None))
        {
            Log.WaitingForOtherSync(_logger, Workspace);
            await _lock.WaitAsync(cancellationToken);
        }

        return new Releaser(_lock);
    }

    /// <summary>
    /// Completes an apply that was interrupted (agent killed, disk error) from its journal. Call with the lock held.
    /// If the journal cannot be completed, it is dropped with the index: the next sync trusts nothing on disk and
    /// rewrites whatever differs, so the tree still ends up exact.
    /// </summary>
    public void Recover()
    {
        Store.EnsureCreated();
        SavedTree? journal;
        try
        {
            journal = Store.LoadJournal();
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException or EndOfStreamException)
        {
            Log.RecoveryFailed(_logger, ex);
            Discard();
            return;
        }

        if (journal is null)
        {
            return;
        }

        Log.ReplayingJournal(_logger, Workspace, journal.Entries.Count);
        try
        {
            var counts = Applier.Apply(journal);
            Log.JournalReplayed(_logger, counts.FilesWritten, counts.EntriesDeleted, counts.ApplyMillis);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            Log.RecoveryFailed(_logger, ex);
            Discard();
        }
    }

    /// <summary>Whether names differing only in case are the same file in this workspace. Call with the lock held.</summary>
    public bool IsCaseInsensitive()
    {
        _caseInsensitive ??= _caseMode switch
        {
            SyncCaseSensitivity.Sensitive => false,
            SyncCaseSensitivity.Insensitive => true,
            _ => ProbeCaseInsensitive(),
        };
        return _caseInsensitive.Value;
    }

    /// <summary>
    /// The configured state directory, or the default sibling of the workspace; when that cannot be created (a
    /// workspace mounted at the root of a container, e.g. /workspace, has an unwritable parent) a per-workspace
    /// directory under ~/.cache/rbs/sync.
    /// </summary>
    private string ChooseStateDirectory(WorkspaceSyncOptions options, string workspace)
    {
        var preferred = options.ResolveStateDirectory(workspace);
        if (!string.IsNullOrWhiteSpace(options.StateDirectory) || CanCreate(preferred))
        {
            return preferred;
        }

        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        var name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Workspace));
        var hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(Workspace)))[..12];
        var fallback = Path.Combine(string.IsNullOrEmpty(home) ? Path.GetTempPath() : home, ".cache", "rbs", "sync", $"{name}-{hash}");
        Log.StateDirectoryFallback(_logger, preferred, fallback);
        return fallback;
    }

    private static bool CanCreate(string directory)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(directory)) ?? "/");
            WorkspaceTree.MakeDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private bool ProbeCaseInsensitive()
    {
        var name = $".rbs-case-probe-{Guid.NewGuid():N}";
        var lower = Path.Combine(Workspace, name);
        File.WriteAllBytes(lower, []);
        try
        {
            var insensitive = File.Exists(Path.Combine(Workspace, name.ToUpperInvariant()));
            Log.CaseProbed(_logger, Workspace, insensitive ? "insensitive" : "sensitive");
            return insensitive;
        }
        finally
        {
            File.Delete(lower);
        }
    }

    /// <summary>The index of the last applied tree, or null when there is none or it cannot be read.</summary>
    public SavedTree? LoadIndexOrNull()
    {
        try
        {
            return Store.LoadIndex();
        }
        catch (Exception ex) when (ex is InvalidDataException or EndOfStreamException)
        {
            Log.IndexUnreadable(_logger, ex);
            return null;
        }
    }

    /// <summary>True when the disk holds exactly the indexed tree (plus bazel's root convenience symlinks).</summary>
    public static bool Matches(SavedTree index, Dictionary<string, DiskEntry> disk)
    {
        var extra = disk.Count;
        foreach (var entry in index.Entries)
        {
            if (!disk.TryGetValue(entry.Path, out var found) || found.Kind != entry.Kind)
            {
                return false;
            }

            extra--;
            var same = entry.Kind switch
            {
                EntryKind.File => found.Size == entry.Size && found.MtimeTicks == entry.MtimeTicks && found.Mode == WorkspaceTree.FileMode(entry.Executable),
                EntryKind.Symlink => found.SymlinkTarget == entry.SymlinkTarget,
                _ => true,
            };
            if (!same)
            {
                return false;
            }
        }

        if (extra == 0)
        {
            return true;
        }

        var indexed = index.Entries.Select(e => e.Path).ToHashSet(StringComparer.Ordinal);
        return disk.All(d => indexed.Contains(d.Key) || (d.Value.Kind == EntryKind.Symlink && SyncPaths.IsBazelConvenienceName(d.Key)));
    }

    /// <summary>
    /// Null when the workspace is exactly the synced tree with this manifest digest, as a sync's begin would find it up
    /// to date, else why not: the check a command's <c>expected_tree_digest</c> asks for, so that a warm client need
    /// not make the Sync call first.
    /// </summary>
    public async Task<string?> WhyNotHoldingAsync(ReadOnlyMemory<byte> manifestDigest, CancellationToken cancellationToken)
    {
        using (await AcquireAsync(cancellationToken))
        {
            Recover();
            var index = LoadIndexOrNull();
            if (index is null)
            {
                return "the agent has no synced tree";
            }

            if (index.Digest != Convert.ToHexStringLower(manifestDigest.Span))
            {
                return "the agent holds another tree";
            }

            return Matches(index, WorkspaceTree.Walk(Workspace)) ? null : "the workspace was changed on the agent since its last sync";
        }
    }

    public void Dispose() => _lock.Dispose();

    /// <summary>
    /// Before a command: finishes an apply that a failed sync left in its journal, so a command never runs on half a
    /// tree; refuses (FailedPrecondition) when the tree could not be made whole. Free when no sync ever failed.
    /// </summary>
    public async Task EnsureWholeTreeAsync(CancellationToken cancellationToken)
    {
        if (!Store.HasJournal && !Store.IsIncomplete)
        {
            return;
        }

        using (await AcquireAsync(cancellationToken))
        {
            Recover();
        }

        if (Store.IsIncomplete)
        {
            throw new RpcException(new Status(StatusCode.FailedPrecondition,
                "the agent's workspace is incomplete: its last sync failed while being applied. Sync again and rerun (jbazel syncs before every command)."));
        }
    }

    private void Discard()
    {
        Store.MarkIncomplete();
        Store.DeleteJournal();
        Store.DeleteIndex();
        Store.ClearStaging();
    }

    private sealed class Releaser(SemaphoreSlim semaphore) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                semaphore.Release();
            }
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 620, Level = LogLevel.Information, Message = "Another sync of {Workspace} is running; waiting for it")]
        public static partial void WaitingForOtherSync(ILogger logger, string workspace);

        [LoggerMessage(EventId = 621, Level = LogLevel.Warning, Message = "Completing an interrupted sync of {Workspace} from its journal ({Entries} entries)")]
        public static partial void ReplayingJournal(ILogger logger, string workspace, int entries);

        [LoggerMessage(EventId = 622, Level = LogLevel.Information, Message = "Interrupted sync completed: {Files} files written, {Deleted} entries deleted in {Millis} ms")]
        public static partial void JournalReplayed(ILogger logger, ulong files, ulong deleted, long millis);

        [LoggerMessage(EventId = 623, Level = LogLevel.Error, Message = "Could not complete the interrupted sync; dropping its journal and the index (the next sync rewrites what differs)")]
        public static partial void RecoveryFailed(ILogger logger, Exception exception);

        [LoggerMessage(EventId = 625, Level = LogLevel.Warning,
            Message = "Cannot create the default sync state directory {Preferred}; using {Fallback} (set --sync-state-dir on the workspace's filesystem for atomic renames)")]
        public static partial void StateDirectoryFallback(ILogger logger, string preferred, string fallback);

        [LoggerMessage(EventId = 616, Level = LogLevel.Warning, Message = "The sync index is unreadable; treating the workspace as unknown")]
        public static partial void IndexUnreadable(ILogger logger, Exception exception);

        [LoggerMessage(EventId = 624, Level = LogLevel.Information, Message = "Workspace {Workspace} is case-{Sensitivity}")]
        public static partial void CaseProbed(ILogger logger, string workspace, string sensitivity);
    }
}

/// <summary>Completes an interrupted apply before the agent serves anything (IHostedLifecycleService.StartingAsync runs before Kestrel starts).</summary>
internal sealed class SyncJournalRecovery(WorkspaceSynchronizer synchronizer) : IHostedLifecycleService
{
    public async Task StartingAsync(CancellationToken cancellationToken)
    {
        using var held = await synchronizer.AcquireAsync(cancellationToken);
        synchronizer.Recover();
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
