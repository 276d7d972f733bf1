using System.Globalization;

namespace Rbs.Agent.Execution;

/// <summary>Process-tree discovery through /proc (what Process.Kill(entireProcessTree: true) does on Linux).</summary>
internal static class ProcessTree
{
    /// <summary>All living descendants of <paramref name="rootPid"/>, children before grandchildren.</summary>
    public static IReadOnlyList<int> Descendants(int rootPid)
    {
        var childrenOf = new Dictionary<int, List<int>>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
            {
                continue;
            }

            var ppid = ParentOf(pid);
            if (ppid is { } parent)
            {
                if (!childrenOf.TryGetValue(parent, out var list))
                {
                    childrenOf[parent] = list = [];
                }

                list.Add(pid);
            }
        }

        var result = new List<int>();
        var queue = new Queue<int>();
        queue.Enqueue(rootPid);
        while (queue.Count > 0)
        {
            if (childrenOf.TryGetValue(queue.Dequeue(), out var children))
            {
                foreach (var child in children)
                {
                    result.Add(child);
                    queue.Enqueue(child);
                }
            }
        }

        return result;
    }

    /// <summary>The parent pid from /proc/PID/stat, or null when the process is gone.</summary>
    public static int? ParentOf(int pid)
    {
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }

        // "pid (comm) state ppid ..." where comm may itself contain spaces and parentheses.
        var close = stat.LastIndexOf(')');
        if (close < 0)
        {
            return null;
        }

        var fields = stat[(close + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return fields.Length > 1 && int.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out var ppid)
            ? ppid
            : null;
    }
}
