namespace Rbs.JBazel.Configuration;

/// <summary>
/// Splits jbazel's command line into its own <c>--rbs_*</c> tokens and the arguments for bazel.
/// </summary>
/// <remarks>
/// Only tokens before the first <c>--</c> are looked at. A jbazel option is a token starting with
/// <c>--rbs_</c>; its value is either attached (<c>--rbs_x=value</c>) or, for options that take a value,
/// the next token (<c>--rbs_x value</c>). Everything else — bazel's startup options, the command, its
/// options, <c>--</c> and whatever follows — is returned unchanged and in order. Unknown <c>--rbs_*</c>
/// names are kept as jbazel tokens so the parser reports them instead of silently passing them to bazel.
/// </remarks>
internal static class ArgumentSplitter
{
    public const string Prefix = "--rbs_";

    public static SplitArguments Split(IReadOnlyList<string> args, IReadOnlySet<string> optionsTakingValues)
    {
        var rbs = new List<string>();
        var bazel = new List<string>(args.Count);
        for (var i = 0; i < args.Count; i++)
        {
            var token = args[i];
            if (token == "--")
            {
                // bazel's own separator: the rest belongs to the command (e.g. `bazel run //x -- --rbs_y`).
                for (; i < args.Count; i++)
                {
                    bazel.Add(args[i]);
                }

                break;
            }

            if (!token.StartsWith(Prefix, StringComparison.Ordinal))
            {
                bazel.Add(token);
                continue;
            }

            rbs.Add(token);
            if (!token.Contains('=', StringComparison.Ordinal)
                && optionsTakingValues.Contains(token)
                && i + 1 < args.Count
                && args[i + 1] != "--")
            {
                rbs.Add(args[++i]);
            }
        }

        return new SplitArguments(rbs, bazel);
    }
}

/// <summary>The two halves of jbazel's command line.</summary>
/// <param name="RbsTokens">jbazel's own option tokens, for the System.CommandLine parser.</param>
/// <param name="BazelArgs">Everything else, unchanged and in order, sent to the agent as the tool's arguments.</param>
internal sealed record SplitArguments(IReadOnlyList<string> RbsTokens, IReadOnlyList<string> BazelArgs);
