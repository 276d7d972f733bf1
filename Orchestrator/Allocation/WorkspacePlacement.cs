using System.Security.Cryptography;
using System.Text;
using Rbs.Orchestrator.Hosting;
using Rbs.V1;

namespace Rbs.Orchestrator.Allocation;

/// <summary>Where an agent builds, and whether the client must sync its tree there first.</summary>
/// <param name="AgentKey">The repository half of the agent's (user, repository) key in the state store.</param>
/// <param name="Workspace">The workspace path on the agent's side (stored as <c>SourcePath</c>).</param>
/// <param name="SyncRequired">The agent does not share the client's filesystem: sync before every command.</param>
internal sealed record WorkspacePlacement(string AgentKey, string Workspace, bool SyncRequired)
{
    /// <summary>
    /// Appended to the repository hash of process agents that build a synced copy, so they never share a row (and a
    /// workspace) with the agent that builds the same checkout in place. '~' is outside the characters a client may
    /// send in a repo hash, so no client can name such a row directly.
    /// </summary>
    public const string SyncedKeySuffix = "~synced";

    /// <summary>
    /// Pod agents always build their own copy. A process agent builds the client's directory in place, unless the
    /// client asks for a synced copy (<c>sync_workspace</c>, jbazel <c>--rbs_sync</c>), comes through the gateway
    /// (tunnel mode: a laptop outside the cluster, whose paths mean nothing on this machine), or users are isolated
    /// (<paramref name="isolated"/>): an agent running under its user's uid builds only that user's private copy, never a
    /// directory of the client's that it could not read, or that another user could name as theirs.
    /// </summary>
    public static WorkspacePlacement For(GetServerRequest request, string userId, ConnectMode mode, string sourcePath, OrchestratorOptions options, bool isolated = false)
    {
        if (options.GetBackend() != OrchestratorOptions.ProcessBackend)
        {
            return new WorkspacePlacement(request.RepoHash, sourcePath, SyncRequired: true);
        }

        if (!request.SyncWorkspace && mode != ConnectMode.Tunnel && !isolated)
        {
            return new WorkspacePlacement(request.RepoHash, sourcePath, SyncRequired: false);
        }

        var workspace = Path.Combine(options.GetWorkspacesDirectory(), DirectoryName(userId), request.RepoHash, "tree");
        return new WorkspacePlacement(request.RepoHash + SyncedKeySuffix, workspace, SyncRequired: true);
    }

    /// <summary>
    /// A user id as one safe directory name: kept when it is plain (letters, digits, '.', '_', '-'), otherwise a
    /// readable prefix plus a hash, so two users can never share a directory.
    /// </summary>
    internal static string DirectoryName(string userId)
    {
        var plain = userId.Length is > 0 and <= 64
            && userId[0] != '.'
            && userId.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-');
        if (plain)
        {
            return userId;
        }

        var readable = new string(userId.Where(char.IsAsciiLetterOrDigit).Take(32).ToArray());
        var hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(userId)))[..16];
        return $"{readable}-{hash}";
    }
}
