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

    /// <param name="rcFiles">Workspace-relative rc files this command makes bazel read (<see cref="ClientRcFiles.WorkspaceFiles"/>).</param>
    public static async Task<SyncReport> RunAsync(
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
        var cacheFile = DigestCache.PathFor(environment.Get("XDG_CACHE_HOME"), environment.HomeDirectory, repoHash);
        var warnings = new List<string>();
        var required = BazelReads.Find(root, rcFiles, warnings);
        foreach (var warning in warnings)
        {
            writeErrorLine($"rbs: warning: {warning}");
        }

        var builder = new ClientManifestBuilder(root, new WalkOptions(settings.SyncExcludes, settings.SyncGitignore, required), cacheFile, TimeProvider.System);
        var client = new WorkspaceSyncClient(
            new WorkspaceSync.WorkspaceSyncClient(channels.Get(allocation.AgentAddress)),
            allocation.Headers,
            builder.Build,
            allocation.Description,
            writeErrorLine);
        return await client.SyncAsync(cancellationToken);
    }
}
