using System.Text;
using System.Text.RegularExpressions;

namespace Rbs.JBazel.Sync;

/// <summary>
/// Workspace paths the sync carries even when git ignores them (files, or whole directories): bazel or its launcher is
/// known to read them, and dropping one silently changes the build. <see cref="IsRequired"/> holds for a listed path and
/// everything below it; <see cref="LeadsTo"/> for the directories above one (the walk enters those even when ignored).
/// </summary>
internal sealed class RequiredPaths(IEnumerable<string> paths)
{
    public static RequiredPaths None { get; } = new([]);

    private readonly string[] _paths = paths.Select(path => path.Trim('/')).Where(path => path.Length > 0).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();

    public IReadOnlyList<string> Paths => _paths;

    public bool IsRequired(string relative)
    {
        foreach (var path in _paths)
        {
            if (relative == path || (relative.Length > path.Length && relative[path.Length] == '/' && relative.StartsWith(path, StringComparison.Ordinal)))
            {
                return true;
            }
        }

        return false;
    }

    public bool LeadsTo(string relativeDirectory)
    {
        foreach (var path in _paths)
        {
            if (path.Length > relativeDirectory.Length && path[relativeDirectory.Length] == '/' && path.StartsWith(relativeDirectory, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }
}

/// <summary>
/// What bazel reads by name, whatever git says: the root files bazel and its launchers open (<c>WORKSPACE</c> and its
/// siblings, <c>.bazelrc</c>, <c>.bazelignore</c>, <c>.bazelversion</c> — which bazelisk and Debian's
/// <c>/usr/bin/bazel</c> read to pick the version —, <c>tools/bazel</c> — which they run instead of bazel), the rc files
/// the command reads inside the workspace (imports included, see <see cref="ClientRcFiles"/>), and the directories and
/// BUILD files that <c>WORKSPACE</c> / <c>MODULE.bazel</c> name with string literals in <c>local_repository</c>,
/// <c>new_local_repository</c> (<c>path</c>, <c>build_file</c>) and <c>local_path_override</c>.
/// </summary>
internal static partial class BazelReads
{
    public static readonly IReadOnlyList<string> RootFiles =
        ["WORKSPACE", "WORKSPACE.bazel", "WORKSPACE.bzlmod", "MODULE.bazel", "REPO.bazel", ".bazelrc", ".bazelignore", ".bazelversion", "tools/bazel"];

    private static readonly string[] s_repositoryFiles = ["WORKSPACE", "WORKSPACE.bazel", "WORKSPACE.bzlmod", "MODULE.bazel"];

    /// <param name="root">The workspace root.</param>
    /// <param name="rcFiles">Workspace-relative rc files the command reads.</param>
    /// <param name="warnings">Gets one line per local repository outside the workspace (the agent cannot have it).</param>
    public static RequiredPaths Find(string root, IEnumerable<string> rcFiles, List<string> warnings)
    {
        var paths = new List<string>(RootFiles);
        paths.AddRange(rcFiles);
        foreach (var name in s_repositoryFiles)
        {
            var file = Path.Combine(root, name);
            string text;
            try
            {
                if (!File.Exists(file))
                {
                    continue;
                }

                text = File.ReadAllText(file);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                continue;
            }

            foreach (var (function, attribute, value) in LocalRepositoryArguments(text))
            {
                if (ToWorkspacePath(root, attribute, value) is { } relative)
                {
                    paths.Add(relative);
                }
                else if (attribute == "path" && Path.IsPathRooted(value))
                {
                    warnings.Add($"{name}: {function}(path = \"{value}\") is outside the workspace, so the agent does not have it; bazel there fails to find that repository. Move it into the workspace (e.g. third_party/) to build remotely");
                }
            }
        }

        return new RequiredPaths(paths);
    }

    /// <summary>(function, attribute, string value) of path-like arguments of local repository calls, comments ignored.</summary>
    internal static IEnumerable<(string Function, string Attribute, string Value)> LocalRepositoryArguments(string starlark)
    {
        var code = BlankComments(starlark);
        foreach (Match call in CallPattern().Matches(code))
        {
            var body = Arguments(code, call.Index + call.Length);
            foreach (Match argument in ArgumentPattern().Matches(body))
            {
                yield return (call.Groups["function"].Value, argument.Groups["name"].Value, argument.Groups["value"].Value);
            }
        }
    }

    /// <summary>A workspace-relative path for a <c>path</c> (relative, or absolute inside the root) or a <c>build_file</c> label or path.</summary>
    private static string? ToWorkspacePath(string root, string attribute, string value)
    {
        if (attribute == "build_file")
        {
            // "//pkg:BUILD.x", "@//pkg:BUILD.x" or a workspace-relative path; labels of other repositories are not ours.
            if (value.StartsWith("@//", StringComparison.Ordinal))
            {
                value = value[1..];
            }

            if (value.StartsWith('@'))
            {
                return null;
            }

            if (value.StartsWith("//", StringComparison.Ordinal))
            {
                var colon = value.IndexOf(':', StringComparison.Ordinal);
                value = colon < 0 ? value[2..] : value[2..colon] + "/" + value[(colon + 1)..];
            }
        }

        var full = Path.GetFullPath(value, root);
        var rootFull = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        return full.StartsWith(rootFull + "/", StringComparison.Ordinal) ? full[(rootFull.Length + 1)..] : null;
    }

    /// <summary>The text between a call's parentheses (strings and nesting respected), or the rest when unbalanced.</summary>
    private static string Arguments(string code, int start)
    {
        var depth = 1;
        char quote = '\0';
        for (var i = start; i < code.Length; i++)
        {
            var c = code[i];
            if (quote != '\0')
            {
                if (c == '\\')
                {
                    i++;
                }
                else if (c == quote)
                {
                    quote = '\0';
                }
            }
            else if (c is '"' or '\'')
            {
                quote = c;
            }
            else if (c == '(')
            {
                depth++;
            }
            else if (c == ')' && --depth == 0)
            {
                return code[start..i];
            }
        }

        return code[start..];
    }

    /// <summary>Replaces '#' comments (outside strings) with spaces, keeping every other character where it was.</summary>
    private static string BlankComments(string text)
    {
        var result = new StringBuilder(text);
        char quote = '\0';
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            if (quote != '\0')
            {
                if (c == '\\')
                {
                    i++;
                }
                else if (c == quote || c == '\n')
                {
                    quote = '\0';
                }
            }
            else if (c is '"' or '\'')
            {
                quote = c;
            }
            else if (c == '#')
            {
                for (; i < text.Length && text[i] != '\n'; i++)
                {
                    result[i] = ' ';
                }
            }
        }

        return result.ToString();
    }

    [GeneratedRegex(@"\b(?<function>new_local_repository|local_repository|local_path_override)\s*\(")]
    private static partial Regex CallPattern();

    [GeneratedRegex(@"\b(?<name>path|build_file)\s*=\s*(?:""(?<value>[^""\\\n]*)""|'(?<value>[^'\\\n]*)')")]
    private static partial Regex ArgumentPattern();
}
