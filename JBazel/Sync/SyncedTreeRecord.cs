using System.Text;
using Rbs.JBazel.Configuration;

namespace Rbs.JBazel.Sync;

/// <summary>
/// Which tree this workspace last synced to which agent: <c>$XDG_CACHE_HOME/jbazel/sync/&lt;RepoHash&gt;.synced</c>, beside
/// the digest cache. When the tree is unchanged since, jbazel skips the Sync call and names the tree in the command's
/// start instead (<c>expected_tree_digest</c>); the agent checks it, so a stale or wrong record costs a sync, never a
/// build on the wrong tree.
/// </summary>
internal sealed class SyncedTreeRecord(string? path)
{
    public static SyncedTreeRecord For(string? digestCacheFile) =>
        new(digestCacheFile is null ? null : Path.ChangeExtension(digestCacheFile, ".synced"));

    /// <summary>True when the last sync this workspace made to <paramref name="agentId"/> was of the tree with <paramref name="digest"/>.</summary>
    public bool Holds(string agentId, ReadOnlySpan<byte> digest)
    {
        if (path is null)
        {
            return false;
        }

        try
        {
            return File.ReadAllText(path, Encoding.UTF8) == Format(agentId, digest);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Records a sync that completed (the agent holds that tree now); a record that cannot be written is no record.</summary>
    public void Save(string agentId, ReadOnlySpan<byte> digest)
    {
        if (path is null)
        {
            return;
        }

        CacheFiles.TryWriteAtomically(path, Encoding.UTF8.GetBytes(Format(agentId, digest)));
    }

    /// <summary>The agent no longer holds the recorded tree: the next command syncs first.</summary>
    public void Forget()
    {
        if (path is not null)
        {
            CacheFiles.TryDelete(path);
        }
    }

    private static string Format(string agentId, ReadOnlySpan<byte> digest) => $"{agentId}\n{Convert.ToHexStringLower(digest)}\n";
}
