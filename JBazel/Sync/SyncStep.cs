using Rbs.JBazel.Configuration;
using Rbs.JBazel.Remote;
using Rbs.V1;

namespace Rbs.JBazel.Sync;

/// <summary>Where jbazel's command flow meets the workspace sync: whether to sync, and doing it on the allocation's route.</summary>
internal static class SyncStep
{
    /// <summary>
    /// Sync when the agent cannot share this filesystem, or when asked to (<c>--rbs_sync</c>). An agent that
    /// builds in this very directory is never synced into: that would be syncing the tree onto itself, and
    /// would delete what the sync leaves out (ignored files, .git).
    /// </summary>
    public static bool IsNeeded(GetServerResponse response, RbsSettings settings, string root)
    {
        if (response.SyncRequired)
        {
            return true;
        }

        if (!settings.Sync)
        {
            return false;
        }

        if (response.WorkspacePath.Length == 0 || string.Equals(response.WorkspacePath.TrimEnd('/'), root.TrimEnd('/'), StringComparison.Ordinal))
        {
            throw new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                $"--rbs_sync asked for an agent with its own copy of the workspace, but agent {response.AgentId} builds in {(response.WorkspacePath.Length == 0 ? "an unknown directory" : root)} itself. " +
                "Is the orchestrator older than this jbazel?");
        }

        return true;
    }

    /// <summary>
    /// Reads the tree as bazel will see it (the manifest; cached digests make this ~1 ms warm) and decides whether the
    /// Sync call can be skipped: it can when this workspace's last sync to this agent was of this very tree. The
    /// command then names the tree in its start frame and the agent checks it (<see cref="PreparedSync.ExpectedTreeDigest"/>).
    /// </summary>
    /// <param name="rcFiles">Workspace-relative rc files this command makes bazel read (<see cref="ClientRcFiles.WorkspaceFiles"/>).</param>
    public static PreparedSync Prepare(
        Allocation allocation,
        ChannelPool channels,
        RbsSettings settings,
        CliEnvironment environment,
        string root,
        string repoHash,
        IReadOnlyList<string> rcFiles,
        Action<string> writeErrorLine,
        CancellationToken cancellationToken)
    {
        var stopwatch = System.Diagnostics.Stopwatch.StartNew();
        var cacheFile = DigestCache.PathFor(environment.Get("XDG_CACHE_HOME"), environment.HomeDirectory, repoHash);
        var warnings = new List<string>();
        var required = BazelReads.Find(root, rcFiles, warnings);
        foreach (var warning in warnings)
        {
            writeErrorLine($"rbs: warning: {warning}");
        }

        var builder = new ClientManifestBuilder(root, new WalkOptions(settings.SyncExcludes, settings.SyncGitignore, required), cacheFile, TimeProvider.System);
        var manifest = builder.Build(cancellationToken);
        var record = SyncedTreeRecord.For(cacheFile);
        var unchanged = record.Holds(allocation.AgentId, manifest.Digest);
        return new PreparedSync(allocation, channels, builder, manifest, record, unchanged, stopwatch.ElapsedMilliseconds, writeErrorLine);
    }
}

/// <summary>One command's sync, read and decided (<see cref="SyncStep.Prepare"/>): skipped, or run before the command.</summary>
internal sealed class PreparedSync(
    Allocation allocation,
    ChannelPool channels,
    ClientManifestBuilder builder,
    Manifest manifest,
    SyncedTreeRecord record,
    bool unchanged,
    long preparedMilliseconds,
    Action<string> writeErrorLine)
{
    private readonly Manifest _manifest = manifest;
    private Manifest? _first = manifest;

    /// <summary>True when the agent was last synced to this very tree: no Sync call, the start frame names the tree.</summary>
    public bool Skipped => unchanged;

    /// <summary>For the start frame when <see cref="Skipped"/>: the tree the agent must hold.</summary>
    public byte[] ExpectedTreeDigest => _manifest.Digest;

    /// <summary>The <c>--rbs_status</c> line of a skipped sync: the agent confirms the tree when the command starts.</summary>
    public string SkippedStatusLine =>
        $"rbs: workspace up to date ({(_manifest.Entries.Count == 1 ? "1 entry" : $"{_manifest.Entries.Count} entries")}) in {preparedMilliseconds} ms";

    /// <summary>Prints what the manifest warned about (a skipped sync's only chance to; a sync prints them itself).</summary>
    public void WarnSkipped()
    {
        foreach (var warning in _manifest.Warnings)
        {
            writeErrorLine($"rbs: warning: {warning}");
        }
    }

    /// <summary>Makes the agent's workspace this tree (the manifest read already, then fresh ones if it changes meanwhile).</summary>
    public async Task<SyncReport> RunAsync(CancellationToken cancellationToken)
    {
        var client = new WorkspaceSyncClient(
            new WorkspaceSync.WorkspaceSyncClient(channels.ForAgent(allocation)),
            allocation.Headers,
            ct => Interlocked.Exchange(ref _first, null) ?? builder.Build(ct),
            allocation.Description,
            writeErrorLine);
        try
        {
            var report = await client.SyncAsync(cancellationToken);
            record.Save(allocation.AgentId, report.ManifestDigest);
            return report;
        }
        catch
        {
            // Whatever the agent holds now, it may not be the recorded tree.
            record.Forget();
            throw;
        }
    }
}
